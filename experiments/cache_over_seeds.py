"""The price of each KV-cache policy over training seeds, from a `nestgen run --seeds N` summary.

  nestgen run configs/moving_digits.yaml --seeds 3 --set 'evaluate.schedules=[baseline,magnets]' \\
      --set 'evaluate.caches=[none,every:2,every:3,on_switch,on_switch+cls]' --set evaluate.search.enabled=false
  python -m experiments.cache_over_seeds runs/moving_digits/seeds-*/seeds_summary.json \\
      --json experiments/results/cache_over_seeds_moving_digits.json

The pipeline's claim compares every variant with the baseline (full model, no cache). This
compares each cache policy with *the same schedule without the cache*, model by model: for
each training seed, quality(schedule, policy) / quality(schedule, none) - 1, then the mean
and the 95% Student t interval of that change over the seeds (nestgen.evaluation.seeds), next
to the GFLOPs the policy saves against the same schedule uncached.
"""
from __future__ import annotations

import argparse

from benchmarks.common import write_json
from nestgen.evaluation.seeds import change_text, mean_interval_text, t_interval
from nestgen.storage import read_json


def cache_prices(agg: dict) -> list[dict]:
    """One row per (schedule, cache policy) of a seeds summary (nestgen.evaluation.seeds
    aggregate_summaries), searched rows left out: GFLOPs, the saving against the same schedule
    without cache, the claimed metric (mean [t interval]) and its per-seed paired change
    against the same schedule without cache (mean [t interval], per-seed values)."""
    metric = agg["metric"]
    rows = [v for v in agg["variants"] if not v["searched"]]
    schedule_of = lambda v: next(iter(v["schedule"].values()))     # noqa: E731 - one schedule unless searched
    uncached = {schedule_of(v): v for v in rows if v["cache"] == "none"}
    out = []
    for v in rows:
        schedule = schedule_of(v)
        if schedule not in uncached:
            raise ValueError(f"schedule {schedule!r} was not evaluated with cache none: add none to evaluate.caches")
        ref = uncached[schedule]
        row = {"schedule": v["variant"].split(" cache=")[0], "cache": v["cache"],
               "gflops_per_sample": v["gflops_per_sample"]["mean"],
               "saving_vs_uncached": ref["gflops_per_sample"]["mean"] / v["gflops_per_sample"]["mean"],
               metric: v[metric]}
        if v is not ref:
            if any(q == 0 for q in ref[metric]["per_seed"].values()):
                raise ValueError(f"{metric} of {ref['variant']} is 0 in some model: no relative change against it")
            change = {s: v[metric]["per_seed"][s] / q - 1 for s, q in ref[metric]["per_seed"].items()}
            row["change_vs_uncached"] = t_interval(list(change.values())).as_dict() | {"per_seed": change}
        out.append(row)
    return out


def markdown(agg: dict, rows: list[dict]) -> str:
    metric = agg["metric"]
    lines = [f"| schedule | cache | GFLOPs/sample | saving vs no cache | {metric} | {metric} change vs no cache | per seed |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        q, c = r[metric], r.get("change_vs_uncached")
        change = change_text(c) if c else ""
        per_seed = ", ".join(f"{100 * x:+.1f}%" for x in c["per_seed"].values()) if c else ""
        lines.append(f"| {r['schedule']} | `{r['cache']}` | {r['gflops_per_sample']:.3f} | "
                     f"{r['saving_vs_uncached']:.2f}x | {mean_interval_text(q)} | {change} | {per_seed} |")
    n = len(agg["seeds"])
    lines.append(f"\n{n} training seeds {agg['seeds']}, {agg['num_samples']} samples per variant; "
                 f"mean [95% Student t interval over the seeds, {n - 1} degrees of freedom]; "
                 f"{'lower' if agg['lower_is_better'] else 'higher'} {metric} is better.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("summary", help="seeds_summary.json of a `nestgen run --seeds N` with several evaluate.caches")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    try:
        agg = read_json(args.summary)
        rows = cache_prices(agg)
        table = markdown(agg, rows)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"error: {args.summary} is not a readable seeds summary ({type(e).__name__}: {e}); "
                         "give the seeds_summary.json of a `nestgen run --seeds N` step") from None
    print(table)
    write_json(args.json, {"summary": args.summary, "metric": agg["metric"], "seeds": agg["seeds"],
                           "num_samples": agg["num_samples"], "rows": rows})


if __name__ == "__main__":
    main()
