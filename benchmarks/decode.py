"""Decode benchmark: full-size MaskGIT baseline vs MaGNeTS schedule and KV cache.

  python -m benchmarks.decode --json runs/bench_decode.json
  python -m benchmarks.decode --modes fp32 bf16 fp32+compile     # CPU: what each mode buys

`--modes` runs all four variants once per mode (precision, optionally `+compile`: every
block torch.compile'd) in this one process, and reports each mode's speed against the first
next to the baseline / MaGNeTS ratios. bf16 is autocast, on CPU as on GPU.

Every variant runs in this one process, after a warm-up, as the median of --repeats runs,
so ratios are comparable even on a noisy machine. Weights are random: speed and FLOPs do
not depend on them (the number of tokens fixed per step is deterministic).
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics

import torch

from benchmarks.common import write_json
from nestgen.config import DecodeConfig, ModelConfig
from nestgen.decoding.worker import DecodeWorker
from nestgen.device import resolve_device
from nestgen.flops import decode_flops
from nestgen.model.nested_transformer import NestedTransformer

VARIANTS = [  # (name, schedule, cache)
    ("baseline", "1x12", "none"),
    ("cache only", "1x12", "on_switch"),
    ("schedule only", "8x3,4x3,2x3,1x3", "none"),
    ("magnets", "8x3,4x3,2x3,1x3", "on_switch"),
]


def _time_decode(model, d, batch, precision, repeats, graphed):
    labels = torch.arange(batch) % model.cfg.num_classes
    worker = DecodeWorker(model, model.cfg.grid, cuda_graphs=graphed, precision=precision)
    worker.run(d, labels, range(batch))              # warm-up at the full size (allocator, kernels, graph)
    return statistics.median(worker.run(d, labels, range(batch)).seconds for _ in range(repeats))


def run(args) -> dict:
    device = resolve_device(args.device)
    side = args.tokens_side
    cfg = ModelConfig(vocab_size=args.vocab, grid=[side, side], num_classes=10, width=args.width,
                      depth=args.depth, heads=args.heads)
    torch.manual_seed(0)
    model = NestedTransformer(cfg).to(device).eval()
    rows = []
    graphed = args.cuda_graphs and device.type == "cuda"
    modes = args.modes or [args.precision]
    models = {}
    for mode in modes:
        precision, _, compiled = mode.partition("+")
        models[mode] = model
        if compiled:
            models[mode] = copy.deepcopy(model)
            if not models[mode].compile_blocks():
                print(f"  {mode}: torch.compile is not available here; eager", flush=True)
    for batch in args.batch_sizes:
        for mode in modes:
            for name, schedule, cache in VARIANTS:
                d = DecodeConfig(schedule=schedule, steps=12, cache=cache, guidance_scale=args.guidance)
                sec = _time_decode(models[mode], d, batch, mode.partition("+")[0], args.repeats, graphed)
                rows.append({"mode": mode, "variant": name, "schedule": schedule, "cache": cache,
                             "batch_size": batch, "gflops_per_sample": decode_flops(cfg, d).gflops,
                             "seconds_per_sample": sec / batch})
                print(f"  measured {mode:12s} {name:14s} batch {batch:3d}: {sec / batch * 1e3:9.2f} ms/sample",
                      flush=True)
    by_mode = {}
    for mode in modes:
        by_mode[mode] = {}
        for batch in args.batch_sizes:
            by = {r["variant"]: r for r in rows if r["batch_size"] == batch and r["mode"] == mode}
            first = {r["variant"]: r for r in rows if r["batch_size"] == batch and r["mode"] == modes[0]}
            b, m = by["baseline"], by["magnets"]
            by_mode[mode][str(batch)] = {
                "gflops_ratio": b["gflops_per_sample"] / m["gflops_per_sample"],
                "wall_ratio": b["seconds_per_sample"] / m["seconds_per_sample"],
                f"baseline_speedup_vs_{modes[0]}": first["baseline"]["seconds_per_sample"] / b["seconds_per_sample"],
                f"magnets_speedup_vs_{modes[0]}": first["magnets"]["seconds_per_sample"] / m["seconds_per_sample"]}
    ratios = by_mode[modes[0]]
    big = str(max(args.batch_sizes))
    return {
        "model": {"width": cfg.width, "depth": cfg.depth, "heads": cfg.heads, "tokens": cfg.num_tokens,
                  "vocab": cfg.vocab_size, "params": model.num_params()},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "precision": modes[0].partition("+")[0], "modes": modes,
        "cuda_graphs": graphed, "ratios_by_mode": by_mode,
        "guidance_scale": args.guidance,
        "repeats": args.repeats, "rows": rows, "ratios_by_batch": ratios,
        "gflops_ratio": ratios[big]["gflops_ratio"], "wall_ratio": ratios[big]["wall_ratio"],
    }


def print_table(res: dict) -> None:
    print(f"\nmodel {res['model']}  device {res['device']}  precision {res['precision']}  "
          f"cuda_graphs {res['cuda_graphs']}")
    print(f"{'mode':12s} {'variant':14s} {'schedule':16s} {'cache':10s} {'batch':>5s} {'GFLOPs/sample':>14s} "
          f"{'ms/sample':>10s}")
    for r in res["rows"]:
        print(f"{r['mode']:12s} {r['variant']:14s} {r['schedule']:16s} {r['cache']:10s} {r['batch_size']:5d} "
              f"{r['gflops_per_sample']:14.3f} {r['seconds_per_sample'] * 1e3:10.2f}")
    first = res["modes"][0]
    print(f"\n{'mode':12s} {'batch':>5s} {'GFLOPs ratio':>12s} {'wall ratio':>10s} "
          f"{'baseline x':>10s} {'magnets x':>10s}   (wall ratio: baseline / magnets+cache; "
          f"x: speed-up vs {first})")
    for mode, by_batch in res["ratios_by_mode"].items():
        for b, r in by_batch.items():
            print(f"{mode:12s} {b:>5s} {r['gflops_ratio']:11.2f}x {r['wall_ratio']:9.2f}x "
                  f"{r[f'baseline_speedup_vs_{first}']:9.2f}x {r[f'magnets_speedup_vs_{first}']:9.2f}x")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--tokens-side", type=int, default=8, help="grid side: 8 -> 8x8, 16 -> 16x16 tokens")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=0.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--modes", nargs="+", metavar="PRECISION[+compile]",
                    help="compare these modes in one run (default: --precision alone)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="replay each decode as one captured CUDA graph (GPU only)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared machine: busy "
                    "cores make multi-threaded ops wait on each other)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    print_table(res)
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
