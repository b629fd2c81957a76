"""The Ray Train step for the VQ tokenizers: raw image/video files -> trained tokenizer.

Same skeleton as pipelines.train (pipelines.train_common: TorchTrainer from cfg.scaling,
checkpoints through ray.train.report, resume and failure handling, one MLflow run); the
data are raw files decoded by Ray Data tasks and streamed to the workers as uint8 pixels.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch

from nestgen.local_run import train_tokenizer_local
from pipelines.config import RunConfig, load_run_config
from pipelines.ray_runtime import init_ray
from pipelines.mlflow_runs import start_run
from pipelines.train_common import Worker, WorkerJob, fit_on_workers, run_worker

REPORTED = ("loss", "mse", "psnr", "usage", "perplexity", "lr", "g_loss", "d_loss")   # the last two: adversarial


def tokenizer_job(w: Worker) -> WorkerJob:
    """A TokenizerTrainer on batches of uint8 pixels (images or clips)."""
    from nestgen.tokenizers import TokenizerTrainer, clips_to_pixels, images_to_pixels, save_tokenizer
    from nestgen.tokenizers.checkpoint import read_tokenizer_checkpoint
    t = w.cfg.tokenizer
    trainer = TokenizerTrainer(t, device=w.device, wrap=w.prepare)
    to_px = clips_to_pixels if t.kind == "video" else images_to_pixels

    def train_step(batch: dict) -> dict:
        m = trainer.train_step(to_px(batch["pixels"]))
        return {k: m[k] for k in REPORTED if k in m}

    def load(path: str) -> None:
        state = read_tokenizer_checkpoint(path)
        trainer.core.load_state_dict(state["model"])
        trainer.load_state(state["trainer"])

    def save(path: str | None) -> None:
        if path is not None:            # rank 0: DDP keeps the whole state on every rank
            save_tokenizer(path, trainer.core, trainer=trainer.state())

    return WorkerJob(trainer, t.steps, t.batch_size, t.log_every, torch.uint8, train_step, save=save, load=load,
                     seed=t.seed)


def tokenizer_loop_per_worker(config: dict) -> None:
    run_worker(config, tokenizer_job)


@dataclass
class TokenizerTrainResult:
    checkpoint_url: str
    metrics: dict
    run_id: str | None
    tokenizer_hash: str


def fit_tokenizer(cfg: RunConfig, data_url: str, output_url: str, split: str = "train",
                  parent_run_id: str | None = None, run_key: str = "") -> TokenizerTrainResult:
    """Train cfg.tokenizer on the raw files under data_url (Ray must be initialized).
    run_key: see pipelines.mlflow_runs.start_run."""
    from nestgen.tokenizers import load_tokenizer
    from pipelines.train_data import pixel_dataset
    ds = pixel_dataset(cfg, data_url, split)
    from nestgen.data.raw_files import listing_digest
    with start_run(cfg, "train-tokenizer", output_url, {"data.raw_url": data_url}, parent_run_id, run_key) as run:
        run.log_dataset(data_url, listing_digest(data_url, cfg.tokenize.allow_external_urls), "raw")
        result, url = fit_on_workers(tokenizer_loop_per_worker, cfg, output_url, f"tokenizer-{cfg.name}", ds, run)
        h = load_tokenizer(url).hash
        run.set_tags({"tokenizer_hash": h})
    return TokenizerTrainResult(url, dict(result.metrics), run.run_id, h)


def cmd_tokenizer_train(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    if args.local:
        res = train_tokenizer_local(cfg.tokenizer, args.data, args.split, args.out, cfg.tokenize.fps,
                                    cfg.tokenize.max_image_pixels, cfg.tokenize.video_limits(),
                                    cfg.tokenize.allow_external_urls, max_file_bytes=cfg.tokenize.max_file_bytes)
        for f in res.pop("skipped"):
            print(f"skipped {f['source_uri']}: {f['reason']}", file=sys.stderr)
        print(json.dumps(res, indent=1))
        return 0
    init_ray(args.ray_address)
    res = fit_tokenizer(cfg, args.data, args.out, args.split)
    print(json.dumps({"checkpoint": res.checkpoint_url, "tokenizer_hash": res.tokenizer_hash,
                      "mlflow_run_id": res.run_id, **res.metrics}, indent=1, default=str))
    return 0
