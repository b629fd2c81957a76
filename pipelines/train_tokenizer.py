"""The Ray Train step for the VQ tokenizers: raw image/video files -> trained tokenizer.

Same machinery as pipelines.train (TorchTrainer from cfg.scaling, checkpoints through
ray.train.report, resume and failure handling, one MLflow run); the data are raw files
decoded by Ray Data tasks (nestgen.data.media) and streamed to the workers as uint8 pixels.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from nestgen.config import config_to_dict
from nestgen.local_run import train_tokenizer_local
from nestgen.storage import publish_checkpoint, write_latest
from pipelines.cli_args import add_config_args, add_ray_address
from pipelines.config import RunConfig, load_run_config, run_config_from_dict
from pipelines.ray_runtime import init_ray
from pipelines.train_common import CKPT_FILE, Reporter, checkpoint_url, maybe_fail, mlflow_run, torch_trainer


def _decode_batch(batch: dict[str, np.ndarray], kind: str, spec: dict, max_image_pixels: int,
                  video_limits: dict) -> dict[str, np.ndarray]:
    """Files -> uint8 pixels; undecodable files and files over the budgets are dropped
    (tokenize reports them by name)."""
    from nestgen.data.media import ClipSpec, MediaError, VideoLimits, load_image, load_video_clips, video_demuxer
    from nestgen.storage import read_bytes
    clip, limits = ClipSpec(**spec), VideoLimits(**video_limits)
    out = []
    for uri, start, end in zip(batch["uri"], batch["start"], batch["end"]):
        try:
            data = read_bytes(str(uri))
            out.extend([load_image(data, clip.size, clip.channels, max_image_pixels)] if kind == "image"
                       else load_video_clips(data, replace(clip, start=float(start), end=float(end)), limits,
                                             video_demuxer(str(uri))))
        except (MediaError, OSError):
            continue
    shape = ((0, clip.size, clip.size, clip.channels) if kind == "image"
             else (0, clip.frames, clip.size, clip.size, clip.channels))
    return {"pixels": np.stack(out) if out else np.zeros(shape, np.uint8)}


def tokenizer_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from nestgen.tokenizers import TokenizerTrainer, VQTokenizer, clips_to_pixels, images_to_pixels, save_tokenizer
    from nestgen.tokenizers.checkpoint import read_tokenizer_checkpoint

    cfg = run_config_from_dict(config["cfg"])
    t = cfg.tokenizer
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(VQTokenizer(t), parallel_strategy=cfg.scaling.strategy)
    trainer = TokenizerTrainer(t, model=model, device=device)
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = read_tokenizer_checkpoint(os.path.join(d, CKPT_FILE))
            trainer.core.load_state_dict(state["model"])
            trainer.load_state(state["trainer"])
    start_step = trainer.step
    local_bs = max(1, t.batch_size // world)
    to_px = clips_to_pixels if t.kind == "video" else images_to_pixels
    reporter = Reporter(config, rank, t.log_every, cfg.scaling.checkpoint_every, local_bs * world)
    shard = ray.train.get_dataset_shard("train")

    def save(path: str) -> None:
        save_tokenizer(path, trainer.core, trainer=trainer.state())

    while trainer.step < t.steps:
        for batch in shard.iter_torch_batches(batch_size=local_bs, drop_last=True, dtypes=torch.uint8,
                                              local_shuffle_buffer_size=cfg.scaling.shuffle_buffer or None):
            maybe_fail(config.get("fault_injection"), trainer.step)
            m = trainer.train_step(to_px(batch["pixels"]))
            done = trainer.step >= t.steps
            reporter.step(trainer.step, {k: m[k] for k in ("loss", "mse", "psnr", "usage", "perplexity", "lr")},
                          done, save, start_step=start_step)
            if done:
                break


@dataclass
class TokenizerTrainResult:
    checkpoint_url: str
    metrics: dict
    run_id: str | None
    tokenizer_hash: str


def fit_tokenizer(cfg: RunConfig, data_url: str, output_url: str, split: str = "train",
                  fault_injection: dict | None = None, parent_run_id: str | None = None,
                  run_key: str = "") -> TokenizerTrainResult:
    """Train cfg.tokenizer on the raw files under data_url (Ray must be initialized)."""
    import ray

    from nestgen.data.media import ClipSpec
    from nestgen.data.raw_files import list_raw_files
    from nestgen.tokenizers import load_tokenizer, tokenizer_hash
    t = cfg.tokenizer
    items, _, _ = list_raw_files(data_url)
    items = [{k: it[k] for k in ("uri", "start", "end")} for it in items
             if it["split"] == split and it["kind"] == t.kind]
    if not items:
        raise ValueError(f"no {t.kind} files in split {split!r} under {data_url}")
    spec = asdict(ClipSpec(frames=t.frames, fps=cfg.tokenize.fps, size=t.image_size, channels=t.channels,
                           clips_per_video=cfg.tokenize.clips_per_video))
    ds = ray.data.from_items(items).randomize_block_order().map_batches(
        _decode_batch, fn_kwargs={"kind": t.kind, "spec": spec, "max_image_pixels": cfg.tokenize.max_image_pixels,
                                  "video_limits": asdict(cfg.tokenize.video_limits())},
        batch_size=64, batch_format="numpy")
    client, run_id = mlflow_run(cfg, "train-tokenizer", output_url, {"data.raw_url": data_url}, parent_run_id,
                                run_key)
    try:
        trainer = torch_trainer(tokenizer_loop_per_worker, cfg, output_url, f"tokenizer-{cfg.name}",
                                {"train": ds}, {"cfg": config_to_dict(cfg), "mlflow_uri": cfg.mlflow.resolved_uri(),
                                                "run_id": run_id, "fault_injection": fault_injection})
        result = trainer.fit()
        url = publish_checkpoint(output_url, checkpoint_url(output_url, result), int(result.metrics.get("step", 0)))
        h = tokenizer_hash(load_tokenizer(url))
        client.set_tag(run_id, "checkpoint_uri", url)
        write_latest(output_url, url)
        client.set_tag(run_id, "tokenizer_hash", h)
        client.set_terminated(run_id, "FINISHED")
        return TokenizerTrainResult(url, dict(result.metrics), run_id, h)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise


def cmd_tokenizer_train(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    if args.local:
        res = train_tokenizer_local(cfg.tokenizer, args.data, args.split, args.out, cfg.tokenize.fps,
                                    cfg.tokenize.max_image_pixels, cfg.tokenize.video_limits())
        for f in res.pop("skipped"):
            print(f"skipped {f['source_uri']}: {f['reason']}", file=sys.stderr)
        print(json.dumps(res, indent=1))
        return 0
    init_ray(args.ray_address)
    res = fit_tokenizer(cfg, args.data, args.out, args.split)
    print(json.dumps({"checkpoint": res.checkpoint_url, "tokenizer_hash": res.tokenizer_hash,
                      "mlflow_run_id": res.run_id, **res.metrics}, indent=1, default=str))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("tokenizer-train",
                       help="train the VQ tokenizer of CONFIG on a raw media folder (Ray Train or --local)")
    add_config_args(p)
    p.add_argument("--data", required=True,
                   help="raw files: a folder (<split>/<class>/<file>) or an index file (*.csv, *.jsonl)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True,
                   help="with --local: the checkpoint URL; with Ray: the output folder (same folder resumes)")
    add_ray_address(p)
    p.add_argument("--local", action="store_true", help="single process, no Ray")
    p.set_defaults(func=cmd_tokenizer_train)
