"""Quality cost of `train.sizes_per_step: sample:k` on the digits (vs all sizes every step).

  python -m experiments.sizes_quality --steps 400 --seeds 0 1 --json runs/sizes_quality.json

Trains configs/digits.yaml (shortened to --steps) once per (sizes_per_step, seed) and reports
every nested size's masked-token cross-entropy on the held-out digits (the training loss
without label smoothing or class dropout, averaged over fixed mask draws): lower is better.
Equal steps, so `sample:k` also shows what it saves in time per step.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import write_json
from nestgen.local_run import load_tokens
from nestgen.training.loop import train_on_tokens
from nestgen.training.objective import nested_loss
from pipelines.config import load_run_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def heldout_ce(model, cfg, tokens, labels, draws: int = 8, weights=None) -> dict[int, float]:
    """Per size; with decode-aware `weights`, each smaller size's CE weighted towards its
    decode-time mask ratios (strength 1: the CE on the inputs its schedules give it)."""
    tcfg = dataclasses.replace(cfg.train, class_dropout=0.0, label_smoothing=0.0)
    sums: dict[int, float] = {}
    model.eval()
    with torch.no_grad():
        for d in range(draws):
            out = nested_loss(model, tokens, labels, tcfg, 0, cfg.model.nest_factors,
                              torch.Generator().manual_seed(10_000 + d), weights)
            for f, v in out.per_size.items():
                sums[f] = sums.get(f, 0.0) + float(v) / draws
    return sums


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--modes", nargs="+", default=["all", "sample:1"])
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_run_config(CONFIG, [f"train.steps={args.steps}", "train.warmup_steps=40",
                                f"train.log_every={args.steps}", "train.device=cpu"])
    (tokens, labels), (hold_t, hold_l) = load_tokens(base)
    runs = []
    for mode in args.modes:
        for seed in args.seeds:
            cfg = dataclasses.replace(base, seed=seed, train=dataclasses.replace(base.train, sizes_per_step=mode))
            t0 = time.perf_counter()
            trainer, _ = train_on_tokens(cfg, tokens, labels, progress=False)
            wall = time.perf_counter() - t0
            ce = heldout_ce(trainer.core, cfg, hold_t, hold_l)
            runs.append({"sizes_per_step": mode, "seed": seed, "train_seconds": wall,
                         "heldout_ce": {str(f): v for f, v in ce.items()}})
            print(f"  {mode:9s} seed {seed}: {wall:6.1f} s  " +
                  "  ".join(f"f{f} {v:.4f}" for f, v in ce.items()), flush=True)
    factors = base.model.nest_factors
    summary = {}
    for mode in args.modes:
        rs = [r for r in runs if r["sizes_per_step"] == mode]
        summary[mode] = {"train_seconds": statistics.median(r["train_seconds"] for r in rs),
                         **{f"f{f}": statistics.mean(r["heldout_ce"][str(f)] for r in rs) for f in factors}}
    print(f"\ndigits, {args.steps} steps, seeds {args.seeds}: held-out masked-token CE (mean over seeds)")
    print(f"{'sizes_per_step':14s} " + " ".join(f"{'f' + str(f):>7s}" for f in factors) + f" {'train s':>8s}")
    for mode, s in summary.items():
        print(f"{mode:14s} " + " ".join(f"{s[f'f{f}']:7.4f}" for f in factors) + f" {s['train_seconds']:8.1f}")
    res = {"config": "configs/digits.yaml", "steps": args.steps, "seeds": args.seeds, "runs": runs,
           "summary": summary}
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
