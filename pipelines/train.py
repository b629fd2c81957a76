"""The Ray Train step: nested transformer training on N workers, checkpoints on storage, MLflow.

    driver: MLflow run (params) -> fit_on_workers(train_loop_per_worker, token dataset)
            -> final checkpoint URI tag + sample grid per nested size + the generator
            as an MLflow model [+ registered model version] -> FINISHED | FAILED
    worker: a NestedTrainer (its objective wrapped for DDP, or sharded with FSDP2 when
            scaling.strategy is fsdp: nestgen.training.sharding) in the skeleton of
            pipelines.train_common (resume, batches, reports, checkpoints); rank 0 also
            logs sample grids every mlflow.sample_grid_every steps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from nestgen.checkpoint import load_model, read_checkpoint, save_checkpoint
from nestgen.local_run import train_local
from pipelines.config import RunConfig, load_run_config
from pipelines.ray_runtime import init_ray
from pipelines.mlflow_runs import Run, start_run
from pipelines.model_registry import log_generator, register_model
from pipelines.train_common import Worker, WorkerJob, fit_on_workers, run_worker


def generator_job(w: Worker) -> WorkerJob:
    """A NestedTrainer on batches of tokens and labels; checkpoints with the tokenizer's hash."""
    from nestgen.training.loop import NestedTrainer
    cfg, tcfg = w.cfg, w.cfg.train
    if cfg.scaling.strategy == "fsdp" and w.world > 1:
        from nestgen.training.sharding import shard_objective
        wrap = shard_objective
    else:
        wrap = w.prepare
    trainer = NestedTrainer(cfg, device=w.device, rank=w.rank, wrap=wrap)

    def save(path: str | None) -> None:
        model, state = trainer.model_state(), trainer.state()     # every rank: gathered if sharded
        if path is not None:
            save_checkpoint(path, cfg, model, **state, tokenizer_hash=w.config.get("tokenizer_hash"))

    # A sharded model samples from a copy gathered by every rank, so every rank takes part.
    grid_every = cfg.mlflow.sample_grid_every if w.run or trainer.sharded else 0
    tokenizer = _tokenizer(cfg, w.config.get("manifest")) if grid_every and w.run else None

    def sample_grid(done: bool) -> None:
        if trainer.step % grid_every or done:
            return
        model = trainer.eval_model()          # a collective when sharded
        if w.run:
            log_sample_grid(w.run, model, cfg, tokenizer, trainer.step)

    return WorkerJob(trainer, tcfg.steps, tcfg.batch_size, tcfg.log_every, torch.long,
                     train_step=lambda batch: trainer.train_step(batch["tokens"], batch["label"]),
                     save=save, load=lambda path: trainer.load_state(read_checkpoint(path)), seed=cfg.seed,
                     tokens_per_sample=cfg.model.num_tokens, after_step=sample_grid if grid_every else None)


def train_loop_per_worker(config: dict) -> None:
    run_worker(config, generator_job)


@dataclass
class TrainResult:
    checkpoint_url: str
    metrics: dict
    run_id: str | None
    start_step: int


GRID_KEY = "samples_by_nested_size"


def log_sample_grid(run: Run, model, cfg: RunConfig, tokenizer=None, step: int = 0) -> None:
    """One row of class-conditional samples per nested size (schedule FxK, no cache), as the
    run's image GRID_KEY at training step `step`."""
    from dataclasses import replace

    from nestgen.decoding.maskgit import decode
    from nestgen.images import png_bytes
    from nestgen.render import sample_sheet, tokens_to_pixels
    device = next(model.parameters()).device
    n = max(1, min(10, cfg.model.num_classes))
    rows = []
    for f in sorted(cfg.model.nest_factors):
        d = replace(cfg.decode, schedule=f"{f}x{cfg.decode.steps}", cache="none")
        tokens = decode(model, torch.arange(n, device=device), d, seeds=range(n)).tokens
        rows.append(tokens_to_pixels(tokens.cpu(), cfg.model.grid, tokenizer))
    run.log_image(GRID_KEY, png_bytes(sample_sheet(rows, scale=4 if tokenizer is None else 2)), step)


def _tokenizer(cfg: RunConfig, manifest: dict | None):
    if not manifest:
        return None
    from nestgen.data.shards import shard_tokenizer
    return shard_tokenizer(cfg.data.url, manifest["tokenizer"]["hash"])


def fit(cfg: RunConfig, output_url: str, parent_run_id: str | None = None, run_key: str = "") -> TrainResult:
    """Train on the current Ray cluster (ray.init done by the caller); see the module doc.
    run_key: see pipelines.mlflow_runs.start_run."""
    from pipelines.train_data import token_dataset

    ds, manifest = token_dataset(cfg)
    extra = ({"data.manifest_url": cfg.data.url, "data.tokenizer_hash": manifest["tokenizer"]["hash"],
              "data.input_fingerprint": manifest["input_fingerprint"]} if manifest else {})
    with start_run(cfg, "train", output_url, extra, parent_run_id, run_key) as run:
        if manifest:
            run.log_dataset(cfg.data.url, manifest["input_fingerprint"], "tokens")
        result, ckpt_url = fit_on_workers(train_loop_per_worker, cfg, output_url, f"train-{cfg.name}", ds, run, {
            "manifest": manifest, "tokenizer_hash": manifest["tokenizer"]["hash"] if manifest else None})
        step = int(result.metrics.get("step", 0))
        run.set_tags({"final_step": step})
        model, _ = load_model(ckpt_url)
        log_sample_grid(run, model, cfg, _tokenizer(cfg, manifest), step)
        model_id = log_generator(run, ckpt_url, manifest["tokenizer"]["url"] if manifest else "", step)
        if cfg.mlflow.registered_model:
            register_model(run, model_id, cfg.mlflow.registered_model, cfg.mlflow.registered_alias)
    return TrainResult(ckpt_url, dict(result.metrics), run.run_id, int(result.metrics.get("start_step", 0)))


def cmd_train(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    if args.local:
        ckpt, history = train_local(cfg, args.out)
        print(json.dumps(history[-1], indent=1))
        print(f"checkpoint: {ckpt}")
        return 0
    init_ray(args.ray_address)
    res = fit(cfg, args.out)
    print(json.dumps({"checkpoint": res.checkpoint_url, "mlflow_run_id": res.run_id,
                      "start_step": res.start_step, **res.metrics}, indent=1, default=str))
    return 0
