"""Project the full paper runs from measured unit costs (docs/scaling.md shows the output).

  python -m experiments.scale_projection [--cpu experiments/results/paper_shapes_cpu.json] [--json PATH]

Every GPU stage is its FLOPs divided by an achieved rate measured on an H100 in
benchmarks/results/ (never a peak): the FLOPs come from the paper configs themselves
(nestgen.flops for the transformer, torch's FlopCounterMode on the meta device for the VQ
tokenizers); every CPU stage is its units divided by a rate per core that the rehearsal
measured (experiments.paper_shapes). ASSUMPTIONS lists every number that is not measured
here; the output repeats it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"     # the speed measurements (H100)
OWN_RESULTS = ROOT / "experiments" / "results"

# Units of the full runs (training split unless said otherwise).
# pixel_factor: the real files' pixels per frame over the rehearsal's (256x256 JPEGs, 128x128
# AVIs), by which the measured decode cost per file is scaled (decode cost ~ pixels).
DATASETS = {
    "imagenet256": {"files": 1_281_167, "eval_reference_files": 50_000, "what": "ImageNet-1k train images",
                    "pixel_factor": 469 * 387 / 256**2, "pixels": "mean ImageNet image ~469x387"},
    "ucf101": {"files": 9_537, "eval_reference_files": 3_783, "what": "UCF101 split-1 train videos",
               "pixel_factor": 320 * 240 / 128**2, "pixels": "UCF101 is 320x240"},
    "kinetics600": {"files": 392_000, "eval_reference_files": 30_000, "what": "Kinetics-600 train clips (~390k)",
                    "pixel_factor": 640 * 360 / 128**2, "pixels": "assumed downloaded at 360p (640x360)"},
}
CLUSTERS = {"8xH100": 8, "64xH100": 64}
ASSUMPTIONS = {
    "cpu_cores_per_gpu": 12,          # decoding cores beside each GPU (an 8-GPU node with 96 usable cores)
    "inception_gflops": 11.4,         # Inception-v3 at 299x299: 5.7 G multiply-adds per image (literature)
    "i3d_gflops": 110.0,              # I3D on a 16x224x224 clip: order of magnitude, not measured
    "object_store_list_keys_per_s": 10_000,   # one LIST page of 1000 keys per 100 ms (GCS/S3 typical)
    "scaling_efficiency": 1.0,        # linear in GPUs: no communication or input stalls modelled
    "tokenizer_rate": "the measured encode-only rate of a small tokenizer, also for tokenizer training "
                      "(small convolutions underuse an H100: likely pessimistic)",
    "kinetics600_decode": "UCF101's measured decode cost per clip (MPEG-4 AVI), scaled by pixels; K600 is H.264",
}


def _tokenizer_gflops(cfg) -> dict:
    """GFLOPs per item of the tokenizer of cfg: encode, decode, and a training step (3x forward)."""
    from nestgen.tokenizers import VQTokenizer
    t = cfg.tokenizer
    with torch.device("meta"):
        tok = VQTokenizer(t)
        shape = (1, t.channels, t.image_size, t.image_size) if t.kind == "image" else \
            (1, t.channels, t.frames, t.image_size, t.image_size)
        x = torch.zeros(shape)
        with FlopCounterMode(display=False) as enc:
            ids = tok.encode(x)
        with FlopCounterMode(display=False) as dec:
            tok.decode(torch.zeros(ids.shape, dtype=torch.long))
    e, d = enc.get_total_flops() / 1e9, dec.get_total_flops() / 1e9
    return {"encode": e, "decode": d, "train_step": 3 * (e + d)}


def measured_gpu_rates() -> dict:
    """Achieved TFLOP/s on one H100 (bf16 where measured), from benchmarks/results/*h100*."""
    from nestgen.tokenizers import TokenizerConfig
    train = json.loads((RESULTS / "train_h100_bf16.json").read_text())["rows"][0]
    dec = json.loads((RESULTS / "decode_h100_bf16_graphs.json").read_text())["rows"]
    magnets = next(r for r in dec if r["variant"] == "magnets" and r["batch_size"] == 128)
    enc = {r["kind"]: r for r in json.loads((RESULTS / "tokenize_h100_encode.json").read_text())["rows"]}
    # the configs benchmarks.tokenize --encode-only timed
    img = TokenizerConfig(kind="image", image_size=32, downsample=4)
    vid = TokenizerConfig(kind="video", channels=1, image_size=64, frames=16, downsample=8, temporal_downsample=4)
    from types import SimpleNamespace
    enc_tf = min(_tokenizer_gflops(SimpleNamespace(tokenizer=c))["encode"] * enc[k]["items_per_s"] / 1e3
                 for k, c in (("image", img), ("video", vid)))
    return {"train_tflops": train["tflops"], "decode_tflops": magnets["gflops_per_sample"] / magnets["seconds_per_sample"] / 1e3,
            "tokenizer_tflops": enc_tf,
            "sources": {"train": "train_h100_bf16.json (width 768, depth 24, 256 tokens, batch 128)",
                        "decode": "decode_h100_bf16_graphs.json, magnets at batch 128 (the lower of its rates)",
                        "tokenizer": "tokenize_h100_encode.json (encode-only; the lower of image/video)"}}


def _hours(seconds: float) -> float:
    return seconds / 3600


def project(name: str, cpu: dict, gpu: dict) -> dict:
    from nestgen.decoding.config import DecodeConfig  # noqa: F401  (decode_flops' argument type)
    from dataclasses import replace

    from nestgen.flops import decode_flops, training_flops_per_sample
    from pipelines.config import load_run_config
    cfg = load_run_config(ROOT / "configs" / f"{name}.yaml")
    ds = DATASETS[name]
    tokg = _tokenizer_gflops(cfg)
    run = cpu["runs"].get(name) or cpu["runs"].get("ucf101")     # kinetics600: UCF101's per-clip costs
    ingest = run["ingest"]
    video = cfg.tokenizer.kind == "video"
    clips_per_file = 1 if not video else cfg.tokenize.clips_per_video
    items = ds["files"] * clips_per_file
    index_rate = run["index"]["rows"] / run["index"]["seconds"]      # nestgen index, one process
    # clips (videos) or images decoded per second and core, at the real files' frame size
    decode_rate = ingest["decode_items_per_s_per_core"] / ds["pixel_factor"]
    e = cfg.evaluate
    variants = [(s, c, g) for s in e.schedules for c in e.caches for g in e.guidance_scales]
    dec_gflops = sum(decode_flops(cfg.model, replace(cfg.decode, schedule=s, cache=c, guidance_scale=g),
                                  cfg.train.cond_tokens).gflops for s, c, g in variants)
    base = decode_flops(cfg.model, replace(cfg.decode, schedule="baseline", cache="none"), cfg.train.cond_tokens).gflops
    search = e.search.max_candidates * e.search.num_samples * base * e.search.budget_fraction if e.search.enabled else 0
    samples = len(variants) * e.num_samples + (e.search.max_candidates * e.search.num_samples if e.search.enabled else 0)
    feature = ASSUMPTIONS["i3d_gflops"] if video else 2 * ASSUMPTIONS["inception_gflops"]   # FID + IS calls
    sq = cpu.get("sqrtm_seconds")
    feat_dim = 400 if video else 2048
    sqrtm = sq["seconds"] * (feat_dim / sq["dim"]) ** 3 if sq else 0.0
    out = {"units": {"files": ds["files"], "items": items, "what": ds["what"]},
           "tokenizer_gflops": tokg, "train_gflops_per_sample": training_flops_per_sample(cfg.model, cfg.model.nest_factors) / 1e9,
           "stages": {}}
    for cluster, g in CLUSTERS.items():
        cores = g * ASSUMPTIONS["cpu_cores_per_gpu"]
        eff = ASSUMPTIONS["scaling_efficiency"]
        st = {}
        st["index"] = {"wall_s": ds["files"] / index_rate + ds["files"] / ASSUMPTIONS["object_store_list_keys_per_s"],
                       "gpu_h": 0.0, "bound": "driver, one core + object-store listing"}
        t = cfg.tokenizer
        gpu_s = t.steps * t.batch_size * tokg["train_step"] / (gpu["tokenizer_tflops"] * 1e3 * g * eff)
        cpu_s = t.steps * t.batch_size / (decode_rate * cores)
        st["tokenizer"] = {"wall_s": max(gpu_s, cpu_s), "gpu_h": _hours(gpu_s) * g,
                           "bound": "GPU" if gpu_s >= cpu_s else "CPU decode"}
        all_files = ds["files"] + ds["eval_reference_files"]
        gpu_s = all_files * clips_per_file * tokg["encode"] / (gpu["tokenizer_tflops"] * 1e3 * g * eff)
        cpu_s = all_files * clips_per_file / (decode_rate * cores)
        st["tokenize"] = {"wall_s": max(gpu_s, cpu_s), "gpu_h": _hours(max(gpu_s, cpu_s)) * g,
                          "bound": "GPU" if gpu_s >= cpu_s else "CPU decode"}
        gpu_s = cfg.train.steps * cfg.train.batch_size * out["train_gflops_per_sample"] / (gpu["train_tflops"] * 1e3 * g * eff)
        st["train"] = {"wall_s": gpu_s, "gpu_h": _hours(gpu_s) * g, "bound": "GPU"}
        gpu_flops = e.num_samples * dec_gflops + search + samples * (tokg["decode"] + feature)
        gpu_s = gpu_flops / (gpu["decode_tflops"] * 1e3 * g * eff)
        driver_s = (len(variants) + (e.search.max_candidates if e.search.enabled else 0)) * sqrtm
        st["evaluate"] = {"wall_s": gpu_s + driver_s, "gpu_h": _hours(gpu_s + driver_s) * g,
                          "bound": f"GPU + {driver_s:.0f} s of Frechet sqrtm on the driver", "samples": samples}
        out["stages"][cluster] = st
    from nestgen.model.nested_transformer import NestedTransformer
    with torch.device("meta"):
        params = sum(p.numel() for p in NestedTransformer(cfg.model).parameters())
    # fp32 weights, their EMA and AdamW's two moments: what a resumable checkpoint holds
    out["checkpoint"] = {"params": params, "gb": 4 * params * 4 / 1e9, "kept": cfg.scaling.keep_checkpoints}
    mem = ingest["driver_bytes_per_listed_file"]
    out["driver_listing_gb"] = {f"{k}x": ds["files"] * k * mem / 1e9 for k in (1, 10, 100)}
    return out


def table(proj: dict) -> str:
    lines = ["| config | stage | 8xH100 wall | 8xH100 GPU-h | 64xH100 wall | 64xH100 GPU-h | bound by |",
             "|---|---|---|---|---|---|---|"]

    def wall(s: float) -> str:
        return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"
    for name, p in proj["configs"].items():
        a, b = p["stages"]["8xH100"], p["stages"]["64xH100"]
        for stage in a:
            lines.append(f"| {name} | {stage} | {wall(a[stage]['wall_s'])} | {a[stage]['gpu_h']:.0f} | "
                         f"{wall(b[stage]['wall_s'])} | {b[stage]['gpu_h']:.0f} | {b[stage]['bound']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", default=str(OWN_RESULTS / "paper_shapes_cpu.json"))
    ap.add_argument("--json", default=str(OWN_RESULTS / "scale_projection.json"))
    args = ap.parse_args(argv)
    cpu = json.loads(Path(args.cpu).read_text())
    gpu = measured_gpu_rates()
    proj = {"assumptions": ASSUMPTIONS, "gpu_rates": gpu, "cpu_source": Path(args.cpu).name,
            "configs": {name: project(name, cpu, gpu) for name in DATASETS}}
    print(table(proj))
    print(json.dumps({k: proj[k] for k in ("assumptions", "gpu_rates")}, indent=1))
    for name, p in proj["configs"].items():
        print(name, "tokenizer GFLOPs", {k: round(v, 1) for k, v in p["tokenizer_gflops"].items()},
              "train GFLOPs/sample", round(p["train_gflops_per_sample"], 1),
              "driver listing GB", {k: round(v, 2) for k, v in p["driver_listing_gb"].items()})
    write_json(args.json, proj)
    return proj


if __name__ == "__main__":
    main()
