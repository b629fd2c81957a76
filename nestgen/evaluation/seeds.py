"""Quality over several independently trained models: the same config trained with N seeds,
each model evaluated on the same requests, every number reported as the mean over the
training seeds with a 95% Student t interval (N-1 degrees of freedom).

The t interval treats the N models as independent draws from the distribution of training
outcomes; with N = 2 or 3 it is wide (t quantiles 12.7 and 4.3), which is the honest price of
few seeds. The per-seed values are kept next to every mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats

from nestgen.evaluation.claim import FLOOR_SHARE, ClaimCheck, claim_check
from nestgen.evaluation.report import finish_plot, format_value, variant_color
from nestgen.metrics.intervals import Interval

__all__ = ["MeanInterval", "t_interval", "aggregate_summaries", "seed_claim_lines", "seeds_table_markdown",
           "seeds_plot_png",
           "mean_interval_text", "change_text"]

INTERVAL = "95% Student t interval of the mean over training seeds (N-1 degrees of freedom)"


@dataclass(frozen=True)
class MeanInterval:
    mean: float
    lo: float
    hi: float
    level: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "level": self.level, "n": self.n}


def t_interval(values: Sequence[float], level: float = 0.95) -> MeanInterval:
    """Mean of `values` with the Student t interval mean -+ t_{(1+level)/2, n-1} * s / sqrt(n)."""
    n = len(values)
    if n < 2:
        raise ValueError(f"an interval over seeds needs at least 2 values, got {n}")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return MeanInterval(mean, mean - half, mean + half, level, n)


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _aggregate_rows(rows: dict[int, dict], level: float) -> dict:
    """{field: {mean, lo, hi, level, n, per_seed}} for every numeric field of every row."""
    first = next(iter(rows.values()))
    out = {}
    for key in _numbers(first):
        per_seed = {s: _numbers(r).get(key) for s, r in rows.items()}
        if any(v is None or math.isnan(v) for v in per_seed.values()):
            continue                  # missing or undefined in some model: no mean to report
        out[key] = t_interval(list(per_seed.values()), level).as_dict() | {"per_seed": per_seed}
    return out


def _variant_key(row: dict) -> str:
    # the searched schedule may differ between models: it is one row, "searched"
    return "searched" if row.get("searched") else row["variant"]


def aggregate_summaries(summaries: dict[int, dict], level: float = 0.95) -> dict:
    """`summaries`: training seed -> that model's evaluation summary (EvaluationReport.summary()).
    Every numeric field of the baseline and of each variant becomes {mean, lo, hi, level, n,
    per_seed}. The models must have been evaluated with the same variants and metric."""
    if len(summaries) < 2:
        raise ValueError(f"aggregating over seeds needs at least 2 models, got {len(summaries)}")
    seeds = sorted(summaries)
    first = summaries[seeds[0]]
    for s in seeds:
        if summaries[s]["metric"] != first["metric"]:
            raise ValueError(f"seed {s} was scored by {summaries[s]['metric']}, seed {seeds[0]} by {first['metric']}")
    keys = [_variant_key(r) for r in first["variants"]]
    by_seed = {s: {_variant_key(r): r for r in summaries[s]["variants"]} for s in seeds}
    for s in seeds:
        if sorted(by_seed[s]) != sorted(keys):
            raise ValueError(f"seed {s} evaluated variants {sorted(by_seed[s])}, seed {seeds[0]} {sorted(keys)}")
    variants = []
    for k in keys:
        rows = {s: by_seed[s][k] for s in seeds}
        variants.append({"variant": k, "schedule": {s: r["schedule"] for s, r in rows.items()},
                         "cache": rows[seeds[0]]["cache"], "searched": bool(rows[seeds[0]].get("searched")),
                         "baseline": rows[seeds[0]].get("baseline", first["baseline"]["variant"]),
                         **_aggregate_rows(rows, level)})
    # every quality metric the suite scored (the ones with a bootstrap interval), the claimed one first
    scored = [m for r in first["variants"][:1] for m in r.get("intervals", {}) if m != first["metric"]]
    return {"seeds": seeds, "interval": INTERVAL.replace("95%", f"{level:.0%}"), "metric": first["metric"],
            "metrics": [first["metric"], *scored],
            "lower_is_better": first["lower_is_better"], "num_samples": first["num_samples"],
            "claim_threshold": first["claim"]["threshold"],
            "baseline": {"variant": first["baseline"]["variant"],
                         **_aggregate_rows({s: summaries[s]["baseline"] for s in seeds}, level)},
            "variants": variants, **_floor(summaries, seeds, level)}


def _floor(summaries: dict[int, dict], seeds: list[int], level: float) -> dict:
    """The real-data row over the seeds and which reading the claim check takes: the excess
    over the floor when the floor's mean share of the baseline is above FLOOR_SHARE (every
    model's summary must have the row; {} when one lacks it), the change when a model's floor
    is not comparable at the variants' count (nestgen.evaluation.real.Floor)."""
    if not all(summaries[s].get("real_data") and summaries[s].get("floor") for s in seeds):
        return {}
    real = summaries[seeds[0]]["real_data"]
    rows = {"real_data": {**_aggregate_rows({s: summaries[s]["real_data"] for s in seeds}, level),
                          "variant": real["variant"], "num_samples": real["num_samples"]}}
    shares = [summaries[s]["floor"]["share_of_baseline"] for s in seeds]
    share = None if None in shares else math.fsum(shares) / len(seeds)
    off = [s for s in seeds if "not_comparable" in summaries[s]["floor"]]
    if off:
        return {**rows, "floor": {"share_of_baseline": share, "judged_on": "change", "not_comparable": "; ".join(
            f"seed {s}: {summaries[s]['floor']['not_comparable']}" for s in off)}}
    return {**rows, "floor": {"share_of_baseline": share, "judged_on": "excess" if share > FLOOR_SHARE else "change"}}


def _claim(agg: dict, v: dict) -> ClaimCheck | None:
    """The claim check of variant row `v` over the seeds: mean GFLOPs saving, mean quality change
    against each model's own baseline (at the variant's guidance scale) with its t interval, and
    the change of the excess over the real-data floor where each model has a finite one (else
    the change decides, and the line says the excess is undefined); None for a baseline itself."""
    if v["variant"] == v.get("baseline", agg["baseline"]["variant"]) or "quality_change_vs_baseline" not in v:
        return None
    g, q = v["gflops_saving"], v["quality_change_vs_baseline"]
    floor, x = agg.get("floor"), v.get("excess_change_vs_baseline")
    excess = None if x is None else Interval(x["mean"], x["lo"], x["hi"], x["level"], x["n"])
    off = (floor or {}).get("not_comparable", "")
    return claim_check(g["mean"], q["mean"], q["lo"], q["hi"], agg["claim_threshold"], agg["lower_is_better"],
                       None if off else floor and floor["share_of_baseline"], None if off else excess, off)


def seed_claim_lines(agg: dict) -> list[str]:
    """The claim check over training seeds, one line per variant other than the baseline, with
    the verdict of nestgen.evaluation.claim on the interval over the seeds."""
    n = len(agg["seeds"])
    lines = []
    for v in agg["variants"]:
        if (c := _claim(agg, v)) is not None:
            if c.floor_note:
                excess = f"real-data floor not comparable ({c.floor_note}): judged on the change; "
            else:
                excess = "" if c.floor_share is None else (
                    f"excess over the real-data floor ({100 * c.floor_share:.0f}% of the baseline) "
                    + ("undefined" if c.excess is None else
                       f"{100 * c.excess:+.1f}% [{100 * c.excess_lo:+.1f}, {100 * c.excess_hi:+.1f}]")
                    + f"; judged on the {c.reading}; ")
            lines.append(f"{v['variant']}: GFLOPs saving {c.gflops_saving:.2f}x; {agg['metric']} change "
                         f"{100 * c.change:+.1f}% [{100 * c.lo:+.1f}, {100 * c.hi:+.1f}] over {n} seeds; "
                         f"{excess}within {100 * c.threshold:g}%: {c.verdict}")
    return lines


def mean_interval_text(m: dict) -> str:
    """{mean, lo, hi} as 'mean [lo, hi]' (report.format_value each)."""
    return f"{format_value(m['mean'])} [{format_value(m['lo'])}, {format_value(m['hi'])}]"


def change_text(m: dict) -> str:
    """A relative change {mean, lo, hi} as '+x.x% [+lo, +hi]'."""
    return f"{100 * m['mean']:+.1f}% [{100 * m['lo']:+.1f}, {100 * m['hi']:+.1f}]"


def seeds_table_markdown(agg: dict) -> str:
    """The result table over training seeds as Markdown, one row per variant: schedule (each
    model's, where the search picked differently), mean GFLOPs and saving, every scored metric
    and the claimed metric's change against the baseline as mean [95% t interval], and the
    claim verdict. The result tables of docs/evaluation.md are this, verbatim."""
    metric, n = agg["metric"], len(agg["seeds"])
    metrics = agg.get("metrics", [metric])
    floor = agg.get("floor")
    head = ["variant", "GFLOPs/sample", "saving", *metrics, f"{metric} change",
            *(["excess over floor"] if floor else []), "within " f"{100 * agg['claim_threshold']:g}%"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in agg["variants"]:
        schedules = sorted(set(v["schedule"].values()))
        name = v["variant"] if not v["searched"] else f"searched ({'; '.join(schedules)}), cache={v['cache']}"
        c = _claim(agg, v)
        excess = v.get("excess_change_vs_baseline")
        cells = [name, f"{v['gflops_per_sample']['mean']:.3f}", f"{v['gflops_saving']['mean']:.2f}x",
                 *(mean_interval_text(v[m]) if m in v else "n/a" for m in metrics),
                 change_text(v["quality_change_vs_baseline"]) if c else "(baseline)",
                 *([change_text(excess) if c and excess else "" if not c else "undefined"] if floor else []),
                 c.verdict if c else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if floor:
        real = agg["real_data"]
        lines.append("| " + " | ".join([f"{real['variant']} ({real['num_samples']} held-out)", "-", "-",
                                         *(mean_interval_text(real[m]) if m in real else "n/a" for m in metrics),
                                         "(the floor)", "", ""]) + " |")
    lines.append(f"\n{n} training seeds {agg['seeds']}, {agg['num_samples']} samples per variant; "
                 f"mean [{agg['interval']}]."
                 + (f" The floor is not comparable at the variants' count ({floor['not_comparable']}): the verdict "
                    "reads the change." if floor and "not_comparable" in floor else
                    f" The floor is {100 * floor['share_of_baseline']:.0f}% of the baseline's {metric} (at the real "
                    f"rows' count): the verdict reads the "
                    f"{'change of the excess over the floor' if floor['judged_on'] == 'excess' else 'change'}."
                    if floor else ""))
    return "\n".join(lines) + "\n"


def seeds_plot_png(agg: dict, title: str = "") -> bytes:
    """PNG: every variant's mean quality against its mean GFLOPs per sample (log x), with the
    t interval over training seeds as an error bar and each seed's model as a faint dot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = agg["metric"]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for v in agg["variants"]:
        g, q = v["gflops_per_sample"], v.get(metric)
        if q is None:
            continue
        color = variant_color(v["searched"], v["cache"])
        ax.scatter(list(g["per_seed"].values()), list(q["per_seed"].values()), s=10, c=color, alpha=0.35, zorder=2)
        ax.errorbar([g["mean"]], [q["mean"]], yerr=[[q["mean"] - q["lo"]], [q["hi"] - q["mean"]]], fmt="o",
                    c=color, ms=5, elinewidth=1.2, capsize=3, zorder=3)
        ax.annotate(v["variant"], (g["mean"], q["mean"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_ylabel(f"{metric} ({'lower' if agg['lower_is_better'] else 'higher'} is better): mean and "
                  f"{agg['interval'].split(' of the mean')[0]} over {len(agg['seeds'])} seeds")
    return finish_plot(fig, ax, title or f"{metric} against decode compute over training seeds {agg['seeds']}")
