"""Training throughput: tokens/s of nested training (all sizes + distillation per step).

  python -m benchmarks.train --json runs/bench_train.json            # Ray Train, 1 and 2 CPU workers
  python -m benchmarks.train --no-ray --device cuda --depth 24 --width 768 --tokens-side 16 \\
      --batch-size 256 --precision bf16 --compile                    # single GPU: tokens/s and MFU

MFU = achieved model FLOP/s (forward + backward of every nested size, analytic) over the
device's peak (--peak-tflops, default 989 for H100 bf16 dense).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks.common import write_json
from nestgen.flops import training_flops_per_sample
from pipelines.config import run_config_from_dict


def _cfg(args, steps):
    return run_config_from_dict({
        "name": "bench", "model": {"vocab_size": args.vocab, "grid": [args.tokens_side] * 2, "num_classes": 10,
                                   "width": args.width, "depth": args.depth, "heads": args.heads},
        "train": {"steps": steps, "batch_size": args.batch_size, "log_every": max(1, steps // 4),
                  "precision": args.precision, "device": args.device, "warmup_steps": 1},
        "scaling": {"checkpoint_every": 10 ** 9, "shuffle_buffer": 0},
    })


def _synthetic(cfg, n):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, cfg.model.vocab_size, (n, cfg.model.num_tokens), generator=g),
            torch.randint(0, cfg.model.num_classes, (n,), generator=g))


def bench_single(args) -> dict:
    from nestgen.training.loop import NestedTrainer
    cfg = _cfg(args, args.steps)
    tr = NestedTrainer(cfg)
    if args.compile:
        tr.objective = torch.compile(tr.objective)
    tokens, labels = _synthetic(cfg, args.batch_size)
    dev = tr.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        tr.train_step(tokens, labels)
    times = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        tr.train_step(tokens, labels)
        sync()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    flops = training_flops_per_sample(cfg.model, cfg.model.nest_factors) * args.batch_size
    return {"mode": "single", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "workers": 1, "precision": args.precision, "compile": args.compile,
            "step_seconds": sec, "tokens_per_s": args.batch_size * cfg.model.num_tokens / sec,
            "samples_per_s": args.batch_size / sec, "tflops": flops / sec / 1e12,
            "mfu": flops / sec / (args.peak_tflops * 1e12) if dev.type == "cuda" else None}


def bench_ray(args, workers: int) -> dict:
    from pipelines.ray_runtime import init_ray
    from pipelines.train import fit
    init_ray()
    cfg = _cfg(args, args.steps)
    cfg.scaling.num_workers = workers
    cfg.mlflow.tracking_uri = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    out = tempfile.mkdtemp(prefix=f"bench-train-{workers}-")
    t0 = time.perf_counter()
    res = fit(cfg, out)
    wall = time.perf_counter() - t0
    return {"mode": "ray", "device": "cpu", "workers": workers, "precision": args.precision,
            "tokens_per_s": res.metrics["tokens_per_s"], "samples_per_s": res.metrics["samples_per_s"],
            "fit_wall_seconds": wall}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-ray", action="store_true", help="single process (GPU MFU mode)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--tokens-side", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = [bench_single(args)] if args.no_ray else [bench_ray(args, w) for w in args.workers]
    model = {"width": args.width, "depth": args.depth, "tokens": args.tokens_side ** 2, "vocab": args.vocab,
             "batch_size": args.batch_size}
    print(f"\nmodel {model}")
    print(f"{'mode':6s} {'device':24s} {'workers':>7s} {'prec':>5s} {'tokens/s':>10s} {'samples/s':>10s} {'MFU':>6s}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        print(f"{r['mode']:6s} {r['device'][:24]:24s} {r['workers']:7d} {r['precision']:>5s} "
              f"{r['tokens_per_s']:10.0f} {r['samples_per_s']:10.1f} {mfu:>6s}")
    res = {"model": model, "rows": rows}
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
