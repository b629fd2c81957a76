"""Tokenization throughput of the Ray step: images/s and clips/s with 1 and 2 actors.

  python -m benchmarks.tokenize --json runs/bench_tokenize.json

Inputs are real files (digit PNGs, moving-digit MP4s) written once to a temp folder; the
tokenizers are untrained (throughput does not depend on the weights) at the default
TokenizerConfig sizes. Each measurement is a full `tokenize_to_shards` run (list, decode,
encode, write Parquet, manifest), median of --repeats, all in one process.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_json
from nestgen.tokenizers import TokenizerConfig, VQTokenizer, save_tokenizer
from pipelines.config import TokenizeConfig


def _measure(src: str, tok: str, workers: int, batch: int, repeats: int, tmp: Path) -> tuple[float, int]:
    from pipelines.tokenize import tokenize_to_shards
    times, rows = [], 0
    cfg = TokenizeConfig(batch_size=batch, concurrency=workers, cpus_per_actor=1.0)
    for r in range(repeats + 1):                        # first run warms Ray's workers up
        t0 = time.perf_counter()
        m = tokenize_to_shards(src, str(tmp / f"out-{workers}-{r}"), tok, cfg, force=True)
        if r:
            times.append(time.perf_counter() - t0)
        rows = sum(s["rows"] for s in m["splits"].values())
    return statistics.median(times), rows


def encode_only(args) -> dict:
    """Tokenizer encode throughput on one device, no Ray and no file decoding: the ceiling
    of what one tokenizer actor can do (used on GPU machines, where Ray is not installed)."""
    import torch

    from nestgen.device import resolve_device
    dev = resolve_device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = []
    for kind, cfg, shape, batch in (
            ("image", TokenizerConfig(kind="image", image_size=32, downsample=4), (3, 32, 32), 512),
            ("video", TokenizerConfig(kind="video", channels=1, image_size=64, frames=16, downsample=8,
                                      temporal_downsample=4), (1, 16, 64, 64), 64)):
        tok = VQTokenizer(cfg).to(dev).eval()
        x = torch.rand(batch, *shape, device=dev) * 2 - 1
        for _ in range(2):
            tok.encode(x)
        times = []
        for _ in range(args.repeats + 3):
            sync()
            t0 = time.perf_counter()
            tok.encode(x)
            sync()
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        rows.append({"kind": kind, "workers": 1, "items": batch, "seconds": sec, "items_per_s": batch / sec,
                     "grid": cfg.grid, "mode": "encode-only"})
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"device": name, "rows": rows}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--clips-per-class", type=int, default=20)
    ap.add_argument("--encode-only", action="store_true", help="tokenizer encode throughput, no Ray")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.encode_only:
        res = encode_only(args)
        for r in res["rows"]:
            print(f"{res['device']}: {r['kind']:5s} encode {r['items_per_s']:10.1f} items/s (batch {r['items']})")
        write_json(args.json, res)
        return res

    from nestgen.data.image_files import write_digit_images
    from nestgen.data.moving_digits import write_moving_digits
    from pipelines.ray_runtime import init_ray
    tmp = Path(tempfile.mkdtemp(prefix="nestgen-bench-tok-"))
    write_digit_images(str(tmp / "digits"), size=32)
    write_moving_digits(str(tmp / "moving"), num_clips_per_class=args.clips_per_class, frames=16, size=64)
    toks = {"image": TokenizerConfig(kind="image", image_size=32, downsample=4),
            "video": TokenizerConfig(kind="video", channels=1, image_size=64, frames=16, downsample=8,
                                     temporal_downsample=4)}
    for kind, cfg in toks.items():
        save_tokenizer(str(tmp / f"{kind}.pt"), VQTokenizer(cfg))
    ray = init_ray()
    rows = []
    for kind, src, batch in (("image", tmp / "digits", 128), ("video", tmp / "moving", 8)):
        for w in args.workers:
            sec, n = _measure(str(src), str(tmp / f"{kind}.pt"), w, batch, args.repeats, tmp)
            rows.append({"kind": kind, "workers": w, "items": n, "seconds": sec, "items_per_s": n / sec,
                         "grid": toks[kind].grid})
            print(f"  {kind:5s} workers {w}: {n} items in {sec:.1f} s = {n / sec:.1f}/s", flush=True)
    res = {"device": "cpu", "ray_cpus": ray.cluster_resources().get("CPU"), "rows": rows}
    print(f"\n{'kind':6s} {'workers':>7s} {'items':>6s} {'seconds':>8s} {'items/s':>8s}")
    for r in rows:
        print(f"{r['kind']:6s} {r['workers']:7d} {r['items']:6d} {r['seconds']:8.1f} {r['items_per_s']:8.1f}")
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
