"""Training throughput: tokens/s of nested training (all sizes + distillation per step).

  python -m benchmarks.train --json runs/bench_train.json            # Ray Train, 1 and 2 CPU workers
  python -m benchmarks.train --no-ray --device cuda --depth 24 --width 768 --tokens-side 16 \\
      --batch-size 256 --precision bf16 --compile                    # single GPU: tokens/s and MFU
  python -m benchmarks.train --levers baseline chunk ckpt sample:1 --json runs/levers.json

`--levers` times each speed/memory lever of `train` against the plain step in one process:
every lever has its own trainer (same seed and data), and timed steps are interleaved
round-robin, so the ratios hold on a busy machine. The levers:

  baseline   the plain nested step (all sizes, distillation, whole-batch logits)
  chunk      train.loss_chunk = --loss-chunk (head + CE over chunks of masked tokens)
  ckpt       train.activation_checkpointing (recompute block activations in backward)
  compile    train.compile (torch.compile of every block; compile time reported apart)
  sample:k   train.sizes_per_step = sample:k (full size + k of the smaller ones per step)
  a+b        levers together, e.g. chunk+ckpt+compile

MFU = achieved model FLOP/s (forward + backward of every nested size trained in the step,
analytic; recomputation not counted) over the device's peak (--peak-tflops, default 989:
H100 and H200 bf16 dense). On CPU only TFLOP/s are reported. Peak GiB (GPU): the most
memory a lever's own trainer held (weights, optimizer state, a step's activations); saved
MiB (any device): the activations one forward keeps for its backward.
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import tempfile
import time

import torch

from benchmarks.common import write_json
from nestgen.flops import training_flops_per_sample
from pipelines.config import run_config_from_dict


def _cfg(args, steps, **train):
    return run_config_from_dict({
        "name": "bench", "model": {"vocab_size": args.vocab, "grid": [args.tokens_side] * 2, "num_classes": 10,
                                   "width": args.width, "depth": args.depth, "heads": args.heads},
        "train": {"steps": steps, "batch_size": args.batch_size, "log_every": max(1, steps // 4),
                  "precision": args.precision, "device": args.device, "warmup_steps": 1,
                  **train},
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


LEVERS = {
    "baseline": lambda a: {},
    "chunk": lambda a: {"loss_chunk": a.loss_chunk},
    "ckpt": lambda a: {"activation_checkpointing": True},
    "compile": lambda a: {"compile": True},
}


def _lever_train(args, name: str) -> dict:
    """`train` overrides of a lever name; `a+b` combines levers."""
    out = {}
    for part in name.split("+"):
        if part.startswith("sample:"):
            out["sizes_per_step"] = part
        elif part in LEVERS:
            out.update(LEVERS[part](args))
        else:
            raise SystemExit(f"unknown lever {part!r}: one of {', '.join(LEVERS)} or sample:k")
    return out


def _step_flops(cfg) -> float:
    """Expected analytic FLOPs of one step: the full size always, each smaller size with the
    probability that it is sampled."""
    m = cfg.model
    small = [f for f in m.nest_factors if f != 1]
    k = cfg.train.num_sampled_sizes()
    share = 1.0 if k is None else min(1.0, k / len(small))
    return cfg.train.batch_size * (training_flops_per_sample(m, [1])
                                   + share * training_flops_per_sample(m, small))


def _saved_for_backward_mib(tr, tokens, labels) -> float:
    """MiB of activations one step's forward keeps for its backward (tensors autograd saves,
    parameters excluded, shared storage once): the memory the levers trade on any device."""
    from nestgen.device import autocast
    from nestgen.training.objective import sizes_for_step
    params = {p.untyped_storage().data_ptr() for p in tr.model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            kept[st.data_ptr()] = st.nbytes()
        return t

    factors = sizes_for_step(tr.cfg.model.nest_factors, tr.cfg.train.num_sampled_sizes(), random.Random(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(tr.device, tr.cfg.train.precision):
        total, _, _ = tr.objective(tokens.to(tr.device), labels.to(tr.device), 0, factors,
                                   torch.Generator(device=tr.device).manual_seed(0))
    del total
    return sum(kept.values()) / 2 ** 20


def bench_levers(args) -> dict:
    from nestgen.training.loop import NestedTrainer
    base = _cfg(args, args.steps)
    tokens, labels = _synthetic(base, args.batch_size)
    cuda = base.train.device != "cpu" and torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed_step(tr):
        sync()
        t0 = time.perf_counter()
        tr.train_step(tokens, labels)
        sync()
        return time.perf_counter() - t0

    runs = {}
    for name in args.levers:
        cfg = _cfg(args, args.steps, **_lever_train(args, name))
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated() if cuda else 0     # the earlier levers' trainers
        tr = NestedTrainer(cfg)
        first = timed_step(tr)                       # includes compilation where compiled
        for _ in range(args.warmup - 1):
            timed_step(tr)
        runs[name] = {"cfg": cfg, "trainer": tr, "times": [], "first_step_seconds": first,
                      "peak_gib": (torch.cuda.max_memory_allocated() - held) / 2 ** 30 if cuda else None,
                      "saved_mib": _saved_for_backward_mib(tr, tokens, labels)}
        print(f"  ready {name:10s} first step {first:7.2f} s", flush=True)
    for _ in range(args.steps):                      # round-robin: machine load hits all alike
        for r in runs.values():
            r["times"].append(timed_step(r["trainer"]))
    rows = []
    base_sec = statistics.median(runs[args.levers[0]]["times"])
    for name, r in runs.items():
        sec = statistics.median(r["times"])
        tflops = _step_flops(r["cfg"]) / sec / 1e12
        rows.append({"lever": name, "train": {k: v for k, v in dataclasses.asdict(r["cfg"].train).items()
                                               if k in ("loss_chunk", "activation_checkpointing", "compile",
                                                        "sizes_per_step")},
                     "step_seconds": sec, "ratio_vs_first": base_sec / sec,
                     "first_step_seconds": r["first_step_seconds"], "tflops": tflops,
                     "mfu": tflops / args.peak_tflops if cuda else None, "peak_gib": r["peak_gib"],
                     "saved_for_backward_mib": r["saved_mib"]})
    return {"device": torch.cuda.get_device_name() if cuda else "cpu", "threads": torch.get_num_threads(),
            "precision": args.precision, "timed_steps": args.steps, "levers": rows}


def print_levers(res: dict) -> None:
    print(f"\nmodel {res['model']}  device {res['device']}  precision {res['precision']}  "
          f"median of {res['timed_steps']} interleaved steps")
    print(f"{'lever':10s} {'step s':>8s} {'speed-up':>8s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak GiB':>8s} "
          f"{'saved MiB':>9s} {'1st step s':>10s}")
    for r in res["levers"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{r['lever']:10s} {r['step_seconds']:8.3f} {r['ratio_vs_first']:7.2f}x {r['tflops']:8.3f} "
              f"{mfu:>6s} {mem:>8s} {r['saved_for_backward_mib']:9.1f} {r['first_step_seconds']:10.2f}")
    print(f"(speed-up: step time of {res['levers'][0]['lever']} / step time of the lever; saved MiB: "
          "activations one forward keeps for backward)")


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
    ap.add_argument("--levers", nargs="+", help="time these levers (the first is the reference); "
                    "single process")
    ap.add_argument("--loss-chunk", type=int, default=1024, help="masked tokens per chunk for 'chunk'")
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine: busy "
                    "cores make multi-threaded ops wait on each other)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = {"width": args.width, "depth": args.depth, "tokens": args.tokens_side ** 2, "vocab": args.vocab,
             "batch_size": args.batch_size}
    if args.levers:
        res = {"model": model, **bench_levers(args)}
        print_levers(res)
        write_json(args.json, res)
        return res
    rows = [bench_single(args)] if args.no_ray else [bench_ray(args, w) for w in args.workers]
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
