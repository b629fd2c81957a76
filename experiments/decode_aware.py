"""Decode-aware nested training against plain training on the digits: each size's held-out
cross-entropy on the inputs its decode schedules give it, and over all mask ratios.

  python -m experiments.decode_aware --steps 1200 --seeds 0 1 2 --json experiments/results/decode_aware_digits_cpu.json

Trains configs/digits.yaml (its decode.schedule and train.decode_aware_schedules define the bands) once
per (train.decode_aware strength, seed) and reports, per nested size, the masked-token CE on
the held-out digits (no label smoothing or class dropout, fixed mask draws) twice: on its
decode band (the CE weighted as strength-1 decode-aware training weighs it: what the size
meets when decoding) and plain (every ratio of the cosine masks). Lower is better. The
sample-quality ablation (fd_digits over training seeds) is `nestgen run ... --seeds 3` with
and without `--set train.decode_aware=1`.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from benchmarks.common import write_json
from experiments.sizes_quality import CONFIG, heldout_ce
from nestgen.local_run import load_tokens
from nestgen.training.decode_aware import decode_aware_weights
from nestgen.training.loop import train_on_tokens
from pipelines.config import load_run_config


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_run_config(CONFIG, [f"train.steps={args.steps}", f"train.log_every={args.steps}",
                                    "train.device=cpu"])
    (tokens, labels), (hold_t, hold_l) = load_tokens(base)
    m = base.model
    band = decode_aware_weights(1.0, [base.decode.schedule, *base.train.decode_aware_schedules], m.nest_factors,
                                m.num_tokens, base.train.cond_tokens)
    runs = []
    for strength in args.strengths:
        for seed in args.seeds:
            cfg = dataclasses.replace(base, seed=seed, train=dataclasses.replace(base.train, decode_aware=strength))
            t0 = time.perf_counter()
            trainer, _ = train_on_tokens(cfg, tokens, labels, progress=False)
            wall = time.perf_counter() - t0
            on_band = heldout_ce(trainer.core, cfg, hold_t, hold_l, weights=band)
            plain = heldout_ce(trainer.core, cfg, hold_t, hold_l)
            runs.append({"decode_aware": strength, "seed": seed, "train_seconds": wall,
                         "band_ce": {str(f): v for f, v in on_band.items()},
                         "plain_ce": {str(f): v for f, v in plain.items()}})
            print(f"  decode_aware={strength:g} seed {seed}: {wall:6.1f} s  band " +
                  "  ".join(f"f{f} {v:.4f}" for f, v in on_band.items()), flush=True)
    summary = {}
    for strength in args.strengths:
        rs = [r for r in runs if r["decode_aware"] == strength]
        summary[f"{strength:g}"] = {kind: {f"f{f}": statistics.mean(r[kind][str(f)] for r in rs)
                                           for f in m.nest_factors} for kind in ("band_ce", "plain_ce")}
    print(f"\ndigits, {args.steps} steps, seeds {args.seeds}: held-out CE (mean over seeds), on each size's "
          "decode band | over all ratios")
    print(f"{'decode_aware':12s} " + " ".join(f"{'f' + str(f):>7s}" for f in m.nest_factors) + "  | " +
          " ".join(f"{'f' + str(f):>7s}" for f in m.nest_factors))
    for strength, s in summary.items():
        print(f"{strength:12s} " + " ".join(f"{s['band_ce'][f'f{f}']:7.4f}" for f in m.nest_factors) + "  | " +
              " ".join(f"{s['plain_ce'][f'f{f}']:7.4f}" for f in m.nest_factors))
    res = {"config": "configs/digits.yaml", "steps": args.steps, "seeds": args.seeds, "runs": runs,
           "summary": summary}
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
