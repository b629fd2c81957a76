import math

import numpy as np
import pytest

from nestgen.evaluation.seeds import aggregate_summaries, seed_claim_lines, seeds_plot_png, seeds_table_markdown, t_interval


def test_t_interval_uses_n_minus_1_degrees_of_freedom():
    iv = t_interval([1.0, 2.0, 3.0])
    t = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))      # t_{0.975, 2}: closed form for 2 dof (4.3027)
    half = t / math.sqrt(3)                             # t * s / sqrt(n), s = 1
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.lo == pytest.approx(2 - half, rel=1e-12) and iv.hi == pytest.approx(2 + half, rel=1e-12)
    assert t_interval([5.0, 5.0]).lo == t_interval([5.0, 5.0]).hi == 5.0
    with pytest.raises(ValueError, match="at least 2 values"):
        t_interval([1.0])


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = [(iv := t_interval(list(rng.normal(3.0, 2.0, 3)))).lo <= 3.0 <= iv.hi for _ in range(4000)]
    assert 0.935 < np.mean(hits) < 0.965          # a z interval (1.96) would cover ~0.81 at n = 3


def _summary(base_q: float, magnets_q: float, searched_schedule: str, searched_q: float) -> dict:
    def row(name, schedule, q, gflops, searched=False):
        return {"variant": name, "label": "", "searched": searched, "schedule": schedule, "cache": "none",
                "guidance_scale": 0.0, "gflops_per_sample": gflops, "seconds_per_sample": 0.01,
                "gflops_saving": 1.2 / gflops, "fd_digits": q, "digits_accuracy": 0.9, "pareto": True,
                "quality_change_vs_baseline": (q - base_q) / base_q,
                "intervals": {"fd_digits": {"lo": q - 1, "hi": q + 1}, "digits_accuracy": {"lo": 0.85, "hi": 0.95}}}
    return {"metric": "fd_digits", "lower_is_better": True, "num_samples": 100, "claim": {"threshold": 0.10},
            "baseline": {"variant": "1x12 cache=none", "gflops_per_sample": 1.2, "fd_digits": base_q},
            "variants": [row("1x12 cache=none", "1x12", base_q, 1.2),
                         row("8x3,4x3,2x3,1x3 cache=none", "8x3,4x3,2x3,1x3", magnets_q, 0.4),
                         row(f"searched: {searched_schedule} cache=none", searched_schedule, searched_q, 0.4, True)]}


def test_aggregate_reports_mean_interval_and_per_seed_values_per_variant():
    agg = aggregate_summaries({3: _summary(40.0, 44.0, "2x8,1x4", 42.0), 4: _summary(50.0, 52.5, "4x6,1x6", 50.0)})
    assert agg["seeds"] == [3, 4] and agg["metric"] == "fd_digits" and "N-1 degrees of freedom" in agg["interval"]
    assert agg["baseline"]["fd_digits"]["mean"] == 45.0 and agg["baseline"]["fd_digits"]["per_seed"] == {3: 40.0, 4: 50.0}
    magnets, searched = agg["variants"][1], agg["variants"][2]
    change = magnets["quality_change_vs_baseline"]
    assert change["per_seed"] == {3: pytest.approx(0.10), 4: pytest.approx(0.05)}
    assert change["mean"] == pytest.approx(0.075) and change["lo"] < 0.05 and change["hi"] > 0.10
    # the searched row is matched across models although its schedule differs
    assert searched["variant"] == "searched" and searched["schedule"] == {3: "2x8,1x4", 4: "4x6,1x6"}
    assert searched["gflops_saving"]["mean"] == pytest.approx(3.0)
    assert "pareto" not in magnets                       # booleans are not averaged
    (line_m, line_s) = seed_claim_lines(agg)
    lo, hi = 100 * change["lo"], 100 * change["hi"]
    assert line_m == (f"8x3,4x3,2x3,1x3 cache=none: GFLOPs saving 3.00x; fd_digits change +7.5% [{lo:+.1f}, {hi:+.1f}] "
                      "over 2 seeds; within 10%: undecided")          # the interval straddles +10%
    assert line_s.startswith("searched: GFLOPs saving 3.00x; fd_digits change +2.5% [") and line_s.endswith("undecided")
    three = aggregate_summaries({s: _summary(40.0, 41.0 + s / 10, "2x8,1x4", 42.0) for s in range(3)})
    assert seed_claim_lines(three)[0].endswith("over 3 seeds; within 10%: yes")    # +2.75% +- 0.6%
    assert seeds_plot_png(agg)[:4] == b"\x89PNG"


def test_markdown_table_has_a_row_per_variant_with_means_intervals_and_verdicts():
    agg = aggregate_summaries({s: _summary(40.0, 41.0 + s / 10, "2x8,1x4" if s else "4x6,1x6", 42.0 + s)
                               for s in range(3)})
    assert agg["metrics"] == ["fd_digits", "digits_accuracy"]
    head, rule, base, magnets, searched, _, note = seeds_table_markdown(agg).splitlines()
    assert head == "| variant | GFLOPs/sample | saving | fd_digits | digits_accuracy | fd_digits change | within 10% |"
    assert rule.count("---") == 7
    fd = agg["variants"][1]["fd_digits"]
    ch = agg["variants"][1]["quality_change_vs_baseline"]
    assert magnets == (f"| 8x3,4x3,2x3,1x3 cache=none | 0.400 | 3.00x | {fd['mean']:.1f} [{fd['lo']:.1f}, {fd['hi']:.1f}] "
                       f"| 0.900 [0.900, 0.900] | {100 * ch['mean']:+.1f}% [{100 * ch['lo']:+.1f}, {100 * ch['hi']:+.1f}] | yes |")
    assert base.startswith("| 1x12 cache=none | 1.200 | 1.00x | 40.0 [40.0, 40.0] |") and base.endswith("| (baseline) |  |")
    # the search picked differently per model: the row names every schedule it chose; +7.5% whose interval straddles 10%
    assert searched.startswith("| searched (2x8,1x4; 4x6,1x6), cache=none |") and searched.endswith("| undecided |")
    assert note.startswith("3 training seeds [0, 1, 2], 100 samples per variant; mean [95% Student t interval")


def test_aggregate_refuses_models_evaluated_differently():
    a = _summary(40.0, 44.0, "2x8,1x4", 42.0)
    with pytest.raises(ValueError, match="at least 2 models"):
        aggregate_summaries({0: a})
    b = _summary(50.0, 52.5, "4x6,1x6", 50.0)
    b["variants"].pop(1)
    with pytest.raises(ValueError, match="seed 1 evaluated variants"):
        aggregate_summaries({0: a, 1: b})
    c = _summary(50.0, 52.5, "4x6,1x6", 50.0) | {"metric": "fid"}
    with pytest.raises(ValueError, match="scored by fid"):
        aggregate_summaries({0: a, 1: c})


def test_cache_price_over_seeds_is_the_per_seed_change_against_the_same_schedule_uncached():
    from experiments.cache_over_seeds import cache_prices, markdown

    def summary(q: dict) -> dict:
        s = _summary(q["1x12", "none"], q["8x3,4x3,2x3,1x3", "none"], "2x8,1x4", 42.0)
        none_rows = s["variants"][:2]
        cached = [r | {"variant": r["variant"].replace("none", "on_switch"), "cache": "on_switch",
                       "gflops_per_sample": r["gflops_per_sample"] / 2, "fd_digits": q[r["schedule"], "on_switch"]}
                  for r in none_rows]
        s["variants"] = none_rows + cached + s["variants"][2:]
        return s
    per_seed = {0: {("1x12", "none"): 40.0, ("1x12", "on_switch"): 44.0,
                    ("8x3,4x3,2x3,1x3", "none"): 50.0, ("8x3,4x3,2x3,1x3", "on_switch"): 49.0},
                1: {("1x12", "none"): 30.0, ("1x12", "on_switch"): 36.0,
                    ("8x3,4x3,2x3,1x3", "none"): 35.0, ("8x3,4x3,2x3,1x3", "on_switch"): 35.0}}
    agg = aggregate_summaries({s: summary(q) for s, q in per_seed.items()})
    rows = {(r["schedule"], r["cache"]): r for r in cache_prices(agg)}
    assert "searched" not in {s for s, _ in rows} and len(rows) == 4
    full = rows["1x12", "on_switch"]
    assert full["change_vs_uncached"]["per_seed"] == {0: pytest.approx(0.10), 1: pytest.approx(0.20)}
    iv = t_interval([44 / 40 - 1, 36 / 30 - 1])
    assert (full["change_vs_uncached"]["mean"], full["change_vs_uncached"]["lo"]) == (pytest.approx(iv.mean), pytest.approx(iv.lo))
    assert full["saving_vs_uncached"] == pytest.approx(2.0) and "change_vs_uncached" not in rows["1x12", "none"]
    assert rows["8x3,4x3,2x3,1x3", "on_switch"]["change_vs_uncached"]["per_seed"] == {0: pytest.approx(-0.02), 1: 0.0}
    assert "| 1x12 | `on_switch` | 0.600 | 2.00x |" in markdown(agg, cache_prices(agg))
    zero = aggregate_summaries({s: summary(q | {("8x3,4x3,2x3,1x3", "none"): 0.0}) for s, q in per_seed.items()})
    with pytest.raises(ValueError, match="is 0 in some model"):
        cache_prices(zero)
    agg["variants"] = [v for v in agg["variants"] if v["cache"] != "none"]
    with pytest.raises(ValueError, match="add none to evaluate.caches"):
        cache_prices(agg)
