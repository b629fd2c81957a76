"""How many samples the evaluation needs: width of the paired 95% interval of the fd_digits
change against the baseline, at several sample counts, on a trained raw-digits model.

  python -m experiments.interval_width --json experiments/results/interval_width_cpu.json
  python -m experiments.interval_width --checkpoint runs/digits/checkpoint.pt

Trains a raw-digits model (configs/digits.yaml, fewer steps by default) in this process, or
loads --checkpoint, then runs the library's streaming evaluation (the path `nestgen
evaluate` takes, in one process) for each --samples count with the default
interval_chunks and bootstrap_replicates: baseline and MaGNeTS, with and without the
cache. Samples are the same requests at every count (sample i: class i mod 10, seed i),
so a larger count extends a smaller one. Per count and variant: fd_digits, its interval,
the change against the baseline with its paired interval and the interval's width, and
the claim check.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import write_json


def _model(args):
    from pipelines.config import load_run_config
    if args.checkpoint:
        from nestgen.checkpoint import load_model
        return load_model(args.checkpoint)
    from nestgen.data.digits import load_digit_tokens
    from nestgen.training.loop import train_on_tokens
    cfg = load_run_config(args.config, [f"train.steps={args.steps}", f"seed={args.train_seed}",
                                        f"model.width={args.width}", f"model.depth={args.depth}",
                                        f"train.log_every={args.steps}"])
    (tokens, labels), _ = load_digit_tokens(cfg.data.holdout_fraction, cfg.data.seed)
    t0 = time.perf_counter()
    trainer, _ = train_on_tokens(cfg, tokens, labels, progress=False)
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f}s", flush=True)
    return trainer.eval_model().eval(), cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="a trained raw-digits checkpoint instead of training")
    p.add_argument("--config", default="configs/digits.yaml")
    p.add_argument("--steps", type=int, default=800, help="training steps")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--samples", type=int, nargs="+", default=[250, 500, 1000, 2000])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="experiments/results/interval_width_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from dataclasses import replace

    from nestgen.evaluation import build_quality_suite, load_eval_data, local_map, run_evaluation
    from pipelines.config import load_run_config
    from nestgen.render import tokens_to_pixels
    t0 = time.perf_counter()
    model, cfg = _model(args)
    evaluate = load_run_config(args.config).evaluate       # the config's evaluate section, varied below
    data = load_eval_data(cfg)
    suite = build_quality_suite(cfg, evaluate, data, lambda t: tokens_to_pixels(t, cfg.model.grid))
    result = {"width": cfg.model.width, "depth": cfg.model.depth, "train_steps": cfg.train.steps,
              "checkpoint": args.checkpoint or None, "runs": []}
    for n in args.samples:
        e = replace(evaluate, num_samples=n, schedules=["baseline", "magnets"], caches=["none", "on_switch"],
                    search=replace(evaluate.search, enabled=False))
        report = run_evaluation(cfg, e, suite, data, local_map(model, cfg, suite), progress=lambda s: None,
                                bar=False)
        rows = []
        for r, change, claim in zip(report.results, report.changes(), report.claims()):
            iv = report.interval(r, "fd_digits")
            rows.append({"variant": r.variant.name, "gflops_saving": report.baseline_gflops / r.gflops_per_sample,
                         "fd_digits": r.metrics["fd_digits"], "fd_digits_lo": iv.lo, "fd_digits_hi": iv.hi,
                         "change": change.value, "change_lo": change.lo, "change_hi": change.hi,
                         "change_width": change.hi - change.lo, "claim": claim.verdict,
                         "digits_accuracy": r.metrics["digits_accuracy"]})
        result["runs"].append({"num_samples": n, "interval_chunks": e.interval_chunks,
                               "bootstrap_replicates": e.bootstrap_replicates, "rows": rows})
        print(f"\n{n} samples ({min(e.interval_chunks, n)} chunks, {e.bootstrap_replicates} replicates)")
        print(f"{'variant':28s} {'saving':>6s} {'fd_digits [95%]':>24s} {'change [95%]':>26s} {'width':>6s} claim")
        for row in rows:
            print(f"{row['variant']:28s} {row['gflops_saving']:5.2f}x {row['fd_digits']:7.2f} "
                  f"[{row['fd_digits_lo']:6.2f}, {row['fd_digits_hi']:6.2f}] {100 * row['change']:+6.1f}% "
                  f"[{100 * row['change_lo']:+6.1f}, {100 * row['change_hi']:+6.1f}] "
                  f"{100 * row['change_width']:5.1f}% {row['claim']}", flush=True)
        result["wall_seconds"] = time.perf_counter() - t0
        write_json(args.json, result)


if __name__ == "__main__":
    main()
