"""The rehearsal at the paper's shapes: the real paper configs, on small data, through `nestgen run`.

  python -m experiments.paper_shapes [--out runs/paper_shapes] [--quick] [--only imagenet256 ucf101]

For each of configs/imagenet256.yaml and configs/ucf101.yaml: write a procedural folder in
the data set's published layout (nestgen.data.paper_folders: 256x256 JPEGs in ImageNet's
train/<wnid>/ + flat val/ + LOC_val_solution.csv; 128x128 AVIs in UCF101's UCF-101/ +
ucfTrainTestlist/), index it with `nestgen index`, then `nestgen run` the config on a fresh
local Ray: data -> tokenizer -> tokenize -> train -> evaluate -> serve. The overrides
(OVERRIDES, printed and recorded) shrink only model width/depth, steps, sample counts,
batch sizes and worker counts; resolutions, token grids, codebook, schedules and
evaluation variants stay the paper's. Beyond shrinking they set what this machine needs:
local paths instead of gs://, GPUs only if the machine has them (scaling.use_gpu: auto), a local MLflow store, and the
serve step on (the paper configs leave serving to infra/rayservice.yaml).

The standard feature networks (Inception for FID/IS, I3D for FVD) are not on this machine
and are never downloaded, so evaluation runs with stand-ins that have their call interface
and 64-d features (random weights, written as TorchScript next to the run): the metric
code runs end to end, the values mean nothing, and the real networks' cost is not in the
evaluation timings (the Frechet distance's matrix square root at Inception's 2048-d is
timed separately, `sqrtm_2048_seconds`).

Recorded per stage (JSON, and the table docs/scaling.md shows): wall seconds, the units it
processed and their rate per CPU core (the machine's cores, os.cpu_count()), steady-state
rates that the Ray Train workers report (startup excluded), peak memory of the driver and
of each Ray worker (benchmarks.process_memory: /proc VmRSS sampled every 0.25 s) and the
bytes each step wrote.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import write_json
from nestgen.data.paper_folders import write_imagenet_folder, write_ucf101_folder
from benchmarks.process_memory import TreeMemory
from nestgen.metrics.stand_in_nets import StandInI3D, StandInInception, save_stand_in

ROOT = Path(__file__).resolve().parent.parent

# Overrides that every run gets: this machine, not the cluster the configs are written for.
MACHINE = ["scaling.use_gpu=auto", "scaling.num_workers=2", "scaling.cpus_per_worker=1",
           "tokenize.concurrency=2", "tokenize.cpus_per_actor=1", "evaluate.num_workers=2",
           "evaluate.cpus_per_worker=1", "evaluate.reference_stats=''", "pipeline.serve=true",
           "pipeline.retries=0"]

# Per config: (full, quick) shrinking overrides. Image: 256x256 -> 16x16 tokens of 1024 codes;
# video: 16x128x128 -> 4x16x16; every schedule x cache x guidance variant of the config.
# The Inception Score splits the samples in 10: image runs score at least 10 per variant.
OVERRIDES = {
    "imagenet256": (
        ["tokenizer.base_width=8", "tokenizer.max_width=32", "tokenizer.num_res_blocks=1", "tokenizer.steps=20",
         "tokenizer.batch_size=4", "tokenizer.warmup_steps=2", "tokenizer.log_every=5",
         "model.width=128", "model.depth=2", "train.steps=30", "train.batch_size=16", "train.warmup_steps=3",
         "train.log_every=10", "scaling.checkpoint_every=30", "scaling.shuffle_buffer=256",
         "tokenize.batch_size=16", "evaluate.num_samples=10", "evaluate.batch_size=10", "evaluate.grid_samples=4",
         "evaluate.search.num_samples=10", "evaluate.search.max_candidates=4"],
        ["tokenizer.base_width=8", "tokenizer.max_width=16", "tokenizer.num_res_blocks=1", "tokenizer.steps=4",
         "tokenizer.batch_size=4", "tokenizer.warmup_steps=1", "tokenizer.log_every=2",
         "model.width=64", "model.depth=1", "train.steps=4", "train.batch_size=4", "train.warmup_steps=1",
         "train.log_every=2", "scaling.checkpoint_every=4", "scaling.shuffle_buffer=16",
         "tokenize.batch_size=8", "evaluate.num_samples=10", "evaluate.batch_size=10", "evaluate.grid_samples=2",
         "evaluate.schedules=[baseline,magnets]", "evaluate.caches=[on_switch]", "evaluate.guidance_scales=[1.0]",
         "evaluate.search.num_samples=10", "evaluate.search.max_candidates=1"]),
    "ucf101": (
        ["tokenizer.base_width=8", "tokenizer.max_width=32", "tokenizer.num_res_blocks=1", "tokenizer.steps=10",
         "tokenizer.batch_size=4", "tokenizer.warmup_steps=2", "tokenizer.log_every=5",
         "model.width=128", "model.depth=2", "train.steps=20", "train.batch_size=8", "train.warmup_steps=2",
         "train.log_every=5", "scaling.checkpoint_every=20", "scaling.shuffle_buffer=128",
         "tokenize.batch_size=4", "evaluate.num_samples=4", "evaluate.batch_size=4", "evaluate.grid_samples=2",
         "evaluate.search.num_samples=2", "evaluate.search.max_candidates=4"],
        ["tokenizer.base_width=4", "tokenizer.max_width=8", "tokenizer.num_res_blocks=1", "tokenizer.steps=2",
         "tokenizer.batch_size=2", "tokenizer.warmup_steps=1", "tokenizer.log_every=1",
         "model.width=64", "model.depth=1", "train.steps=2", "train.batch_size=2", "train.warmup_steps=1",
         "train.log_every=1", "scaling.checkpoint_every=2", "scaling.shuffle_buffer=16",
         "tokenize.batch_size=2", "evaluate.num_samples=2", "evaluate.batch_size=2", "evaluate.grid_samples=2",
         "evaluate.schedules=[baseline,magnets]", "evaluate.caches=[on_switch]", "evaluate.guidance_scales=[1.0]",
         "evaluate.search.num_samples=2", "evaluate.search.max_candidates=1"]),
}

# Folder sizes: (full, quick).
FOLDERS = {
    "imagenet256": ({"classes": 20, "train_per_class": 10, "val_per_class": 2},
                    {"classes": 20, "train_per_class": 1, "val_per_class": 1}),
    "ucf101": ({"classes": 10, "groups": 4, "clips_per_group": 1, "frames": 64},
               {"classes": 10, "groups": 3, "clips_per_group": 1, "frames": 16}),
}


def _stand_in(kind: str, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("inception-2015-12-05.pt" if kind == "image" else "i3d_torchscript.pt")
    save_stand_in(StandInInception() if kind == "image" else StandInI3D(), path)
    return str(path)


def _du(path: str) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def _train_rates(tracking_uri: str, run_id: str | None) -> dict:
    """The last samples_per_s / tokens_per_s a Ray Train run logged (a window after startup)."""
    if not run_id:
        return {}
    from mlflow.tracking import MlflowClient
    run = MlflowClient(tracking_uri).get_run(run_id)
    return {k: run.data.metrics[k] for k in ("samples_per_s", "tokens_per_s") if k in run.data.metrics}


def build_folder(name: str, root: Path, quick: bool) -> dict:
    t0 = time.perf_counter()
    sizes = FOLDERS[name][quick]
    info = (write_imagenet_folder(root, **sizes) if name == "imagenet256" else write_ucf101_folder(root, **sizes))
    info["seconds"] = time.perf_counter() - t0
    return info


def index_folder(name: str, root: Path) -> dict:
    """`nestgen index` in this process (so the time is the converter's, not Python's start)."""
    from nestgen.data import layouts
    t0 = time.perf_counter()
    layout = "imagenet" if name == "imagenet256" else "ucf101"
    summary = layouts.CONVERTERS[layout](str(root), str(root / "index.csv"))
    summary["seconds"] = time.perf_counter() - t0
    return summary


STEP_LINE = re.compile(r"^\[[\d:]+\] (\w+) +(started|done in|up to date|attempt \d+ failed)")   # the console's


def run_config(name: str, out: Path, index: str, quick: bool) -> dict:
    """`nestgen run configs/<name>.yaml --set ...` in a subprocess, its memory sampled by stage."""
    kind = "image" if name == "imagenet256" else "video"
    run_dir = out / name / "run"
    overrides = MACHINE + OVERRIDES[name][quick] + [
        f"pipeline.output_url={run_dir}", f"pipeline.raw_data={index}", f"data.url={run_dir}/unused-shards",
        f"mlflow.tracking_uri=sqlite:///{(out / name / 'mlflow.db').resolve()}",
        f"evaluate.feature_net={_stand_in(kind, out / name / 'stand_in_nets')}"]
    cmd = [sys.executable, "-m", "pipelines", "run", str(ROOT / "configs" / f"{name}.yaml")]
    for o in overrides:
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    log_path = out / name / "run.log"
    print(f"[paper_shapes] {name}: nestgen run ... (log: {log_path})", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        with TreeMemory(proc.pid) as mem:
            for line in proc.stdout:
                log.write(line)
                m = STEP_LINE.match(line)
                if m:
                    print(f"  {time.perf_counter() - t0:7.1f} s  {line.rstrip()}", flush=True)
                    if m.group(2) == "started":
                        mem.stage = m.group(1)
                    elif m.group(2) == "done in":
                        mem.stage = "between"
            rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{name}: nestgen run failed with status {rc}; see {log_path}")
    dag = json.loads((run_dir / "dag.json").read_text())
    stages = {}
    for s in dag["steps"]:
        stages[s["name"]] = {"seconds": round(s["seconds"], 2), "output_bytes": _du(s["folder"]),
                             **mem.stage_report(s["name"]), "outputs": s["outputs"]}
    return {"config": f"configs/{name}.yaml", "overrides": overrides, "wall_seconds": round(wall, 1),
            "driver_peak_mb_lifetime": mem.driver_hwm_mb(), "stages": stages,
            "tracking_uri": f"sqlite:///{(out / name / 'mlflow.db').resolve()}"}


def unit_rates(name: str, res: dict, cores: int) -> None:
    """Add each stage's units and rates per core (in place)."""
    from pipelines.config import load_run_config
    cfg = load_run_config(ROOT / "configs" / f"{name}.yaml", [o for o in res["overrides"]])
    st = res["stages"]
    tokens_per_row = 1
    for g in cfg.model.grid:
        tokens_per_row *= g
    per_core = lambda units, sec: round(units / sec / cores, 3) if sec else None  # noqa: E731
    files = res["index"]["rows"]
    st["data"]["units"] = {"files": files}
    st["data"]["files_per_s_per_core"] = per_core(files, st["data"]["seconds"])
    tok = st["tokenizer"]
    tok["units"] = {"samples": cfg.tokenizer.steps * cfg.tokenizer.batch_size}
    tok["samples_per_s_per_core"] = per_core(tok["units"]["samples"], tok["seconds"])
    if "samples_per_s" in tok["outputs"]:
        tok["steady_samples_per_s_per_core"] = round(tok["outputs"]["samples_per_s"] / cores, 3)
    tz = st["tokenize"]
    rows = sum(tz["outputs"]["rows"].values())
    tz["units"] = {"files": files, "rows": rows, "tokens": rows * tokens_per_row, "failed": tz["outputs"]["failed"]}
    tz["files_per_s_per_core"] = per_core(files, tz["seconds"])
    tz["tokens_per_s_per_core"] = per_core(rows * tokens_per_row, tz["seconds"])
    tr = st["train"]
    tr["units"] = {"samples": cfg.train.steps * cfg.train.batch_size,
                   "tokens": cfg.train.steps * cfg.train.batch_size * tokens_per_row}
    tr["samples_per_s_per_core"] = per_core(tr["units"]["samples"], tr["seconds"])
    steady = _train_rates(res["tracking_uri"], tr["outputs"].get("mlflow_run_id"))
    if steady:
        tr["steady_samples_per_s_per_core"] = round(steady["samples_per_s"] / cores, 3)
        tr["steady_tokens_per_s_per_core"] = round(steady.get("tokens_per_s", 0) / cores, 1)
    ev = st["evaluate"]
    summary = json.loads(Path(ev["outputs"]["summary_url"]).read_text())
    variants = len(summary["variants"])
    search = summary.get("search") or {}
    scored = len(search.get("scored", [])) * cfg.evaluate.search.num_samples
    ev["units"] = {"variants": variants, "samples": variants * cfg.evaluate.num_samples + scored}
    ev["samples_per_s_per_core"] = per_core(ev["units"]["samples"], ev["seconds"])
    if "serve" in st:
        st["serve"]["units"] = {"requests": 2}


def ingest_costs(name: str, index: str, max_files: int = 200) -> dict:
    """Single-process costs of the driver's and the decoders' work per file: the driver's
    memory per listed file (tracemalloc over list_raw_files of the index) and decoding one
    file to the config's pixels (Pillow / PyAV, one thread), the CPU side of tokenization."""
    import tracemalloc
    from dataclasses import replace

    from nestgen.data.media import ClipSpec, load_image, load_video_clips, video_demuxer
    from nestgen.data.raw_files import list_raw_files
    from nestgen.storage import read_bytes
    from pipelines.config import load_run_config
    cfg = load_run_config(ROOT / "configs" / f"{name}.yaml")
    tracemalloc.start()
    items, _, _ = list_raw_files(index)
    listed_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t, limits = cfg.tokenizer, cfg.tokenize.video_limits()
    spec = ClipSpec(frames=t.frames, fps=cfg.tokenize.fps, size=t.image_size, channels=t.channels,
                    clips_per_video=cfg.tokenize.clips_per_video)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0, clips = time.perf_counter(), 0
    for it in items[:max_files]:
        data = read_bytes(it["uri"])
        if it["kind"] == "image":
            load_image(data, t.image_size, t.channels, cfg.tokenize.max_image_pixels)
            clips += 1
        else:
            clips += len(load_video_clips(data, replace(spec, start=it["start"], end=it["end"]), limits,
                                          video_demuxer(it["rel"])))
    sec = time.perf_counter() - t0
    torch.set_num_threads(threads)
    n = min(len(items), max_files)
    return {"listed_files": len(items), "driver_bytes_per_listed_file": round(listed_bytes / len(items)),
            "decoded_files": n, "decoded_items": clips, "decode_files_per_s_per_core": round(n / sec, 2),
            "decode_items_per_s_per_core": round(clips / sec, 2)}


def sqrtm_seconds(dim: int) -> float:
    """Seconds of one Frechet matrix square root at `dim` features (scipy, this machine)."""
    import numpy as np

    from nestgen.metrics.frechet import frechet_distance
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4 * dim, dim)), rng.normal(size=(4 * dim, dim))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    t0 = time.perf_counter()
    frechet_distance(a.mean(0), s1, b.mean(0), s2)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/paper_shapes")
    ap.add_argument("--quick", action="store_true", help="tiny folders and steps: checks the command in minutes")
    ap.add_argument("--only", nargs="+", choices=list(OVERRIDES), default=list(OVERRIDES))
    ap.add_argument("--sqrtm-dim", type=int, default=1024,
                    help="time one Frechet sqrtm at this many features (0: skip; Inception's is 2048)")
    ap.add_argument("--json", default=None, help="default: experiments/results/paper_shapes_cpu.json "
                                                 "(not written with --quick unless given)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    cores = os.cpu_count() or 1
    t0 = time.perf_counter()
    result = {"machine": {"cores": cores, "load_avg_at_start": os.getloadavg(),
                          "torch_threads": torch.get_num_threads()},
              "quick": args.quick, "runs": {}}
    for name in args.only:
        root = out / name / "raw"
        folder = build_folder(name, root, args.quick)
        print(f"[paper_shapes] {name}: folder {folder}", flush=True)
        index = index_folder(name, root)
        print(f"[paper_shapes] {name}: index {index}", flush=True)
        res = run_config(name, out, index["index"], args.quick)
        res["folder"], res["index"] = folder, index
        res["ingest"] = ingest_costs(name, index["index"])
        unit_rates(name, res, cores)
        result["runs"][name] = res
    if args.sqrtm_dim:
        result["sqrtm_seconds"] = {"dim": args.sqrtm_dim, "seconds": round(sqrtm_seconds(args.sqrtm_dim), 2)}
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(table(result))
    print(f"rehearsal finished in {result['total_seconds'] / 60:.1f} min")
    write_json(args.json or (None if args.quick else str(ROOT / "experiments/results/paper_shapes_cpu.json")), result)
    return result


def _rate(st: dict) -> str:
    keys = [k for k in st if k.endswith("_per_core")]
    return ", ".join(f"{st[k]:g} {k.removesuffix('_per_core').removeprefix('steady_').replace('_per_s', '/s')}"
                     + (" (steady)" if k.startswith("steady") else "") for k in keys if st[k] is not None)


def table(result: dict) -> str:
    """Markdown: one row per config and stage."""
    lines = ["| config | stage | wall s | units | per CPU core | driver peak MB | worker peak MB (max, n) | written |",
             "|---|---|---|---|---|---|---|---|"]
    for name, res in result["runs"].items():
        for stage, st in res["stages"].items():
            w = [x["peak_mb"] for x in st["workers"]]
            units = ", ".join(f"{v} {k}" for k, v in st.get("units", {}).items())
            lines.append(f"| {name} | {stage} | {st['seconds']:.1f} | {units} | {_rate(st)} | {st['driver_peak_mb']:.0f} "
                         f"| {max(w) if w else 0:.0f} ({len(w)}) | {st['output_bytes'] / 1e6:.2f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
