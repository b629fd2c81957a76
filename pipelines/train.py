"""The Ray Train step: nested transformer training on N workers, checkpoints on storage, MLflow.

    driver: MLflow run (params) -> TorchTrainer(train_loop_per_worker, datasets={"train"})
            -> final checkpoint URI tag + sample grid per nested size -> FINISHED | FAILED
    worker: NestedTrainer with its objective wrapped by prepare_model (DDP / FSDP), batches
            streamed from its dataset shard, checkpoints through ray.train.report, rank 0
            logs metrics to the same MLflow run.

Resuming: a fit with the same output URL (Ray's storage_path) and name continues from the
last reported checkpoint; a worker failure is retried (FailureConfig) from that checkpoint,
whose optimizer/scheduler/step state makes the step count exact.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass

import torch

from nestgen.checkpoint import load_model, read_checkpoint, save_checkpoint
from nestgen.config import config_to_dict
from nestgen.local_run import train_local
from nestgen.storage import publish_checkpoint, write_latest
from pipelines.cli_args import add_config_args, add_ray_address
from pipelines.config import RunConfig, load_run_config, run_config_from_dict
from pipelines.ray_runtime import init_ray
from pipelines.train_common import (CKPT_FILE, Reporter, checkpoint_url, maybe_fail, mlflow_run,
                                    torch_trainer)

def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from nestgen.training.loop import NestedTrainer

    cfg = run_config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    trainer = NestedTrainer(cfg, device=device, rank=rank,
                            wrap=lambda m: ray.train.torch.prepare_model(m, parallel_strategy=cfg.scaling.strategy))
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            trainer.load_state(read_checkpoint(os.path.join(d, CKPT_FILE)))
    start_step = trainer.step
    tcfg, scfg = cfg.train, cfg.scaling
    local_bs = max(1, tcfg.batch_size // world)
    reporter = Reporter(config, rank, tcfg.log_every, scfg.checkpoint_every, local_bs * world,
                        cfg.model.num_tokens)
    shard = ray.train.get_dataset_shard("train")

    def save(path: str) -> None:
        save_checkpoint(path, cfg, trainer.core, **trainer.state(), tokenizer_hash=config.get("tokenizer_hash"))

    grid_every = cfg.mlflow.sample_grid_every
    tokenizer = _tokenizer(cfg, config.get("manifest")) if grid_every and reporter.mlflow else None

    while trainer.step < tcfg.steps:
        for batch in shard.iter_torch_batches(batch_size=local_bs, drop_last=True, dtypes=torch.long,
                                              local_shuffle_buffer_size=scfg.shuffle_buffer or None):
            maybe_fail(config.get("fault_injection"), trainer.step)
            m = trainer.train_step(batch["tokens"], batch["label"])
            done = trainer.step >= tcfg.steps
            reporter.step(trainer.step, m, done, save, start_step=start_step)
            if grid_every and reporter.mlflow and trainer.step % grid_every == 0 and not done:
                log_sample_grid(reporter.mlflow, reporter.run_id, trainer.eval_model(), cfg, tokenizer,
                                name=f"samples_by_nested_size_step{trainer.step:08d}.png")
            if done:
                break


@dataclass
class TrainResult:
    checkpoint_url: str
    metrics: dict
    run_id: str | None
    start_step: int


def log_sample_grid(client, run_id: str, model, cfg: RunConfig, tokenizer=None,
                    name: str = "samples_by_nested_size.png") -> None:
    """One row of class-conditional samples per nested size (schedule FxK, no cache)."""
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
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(png_bytes(sample_sheet(rows, scale=4 if tokenizer is None else 2)))
        client.log_artifact(run_id, path)


def _tokenizer(cfg: RunConfig, manifest: dict | None):
    if not manifest:
        return None
    from nestgen.data.shards import shard_tokenizer
    return shard_tokenizer(cfg.data.url, manifest["tokenizer"]["hash"])


def register_model(client, run_id: str, ckpt_url: str, name: str, alias: str = "") -> str:
    """The version of registered model `name` for this run's checkpoint (served as
    models:/<name>/<v>, or models:/<name>@<alias>); the run's checkpoint_uri tag is what the
    version resolves to. A checkpoint already registered for this run (a retried or resumed
    step) keeps its version: one version per trained checkpoint."""
    from mlflow.exceptions import MlflowException
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass                                   # it exists: add a version
    same = [v for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
            if v.tags.get("checkpoint_uri") == ckpt_url]
    # The source is the run (servers refuse plain paths outside a run's artifacts); the
    # checkpoint itself is the run's checkpoint_uri tag, copied onto the version for readers.
    version = same[0].version if same else client.create_model_version(
        name, source=f"runs:/{run_id}/checkpoint", run_id=run_id, tags={"checkpoint_uri": ckpt_url}).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    client.set_tag(run_id, "registered_model", f"models:/{name}/{version}")
    return str(version)


def fit(cfg: RunConfig, output_url: str, fault_injection: dict | None = None,
        parent_run_id: str | None = None, run_key: str = "") -> TrainResult:
    """Train on the current Ray cluster (ray.init done by the caller); see the module doc."""
    from pipelines.train_data import token_dataset

    ds, manifest = token_dataset(cfg)
    extra = ({"data.manifest_url": cfg.data.url, "data.tokenizer_hash": manifest["tokenizer"]["hash"],
              "data.input_fingerprint": manifest["input_fingerprint"]} if manifest else {})
    client, run_id = mlflow_run(cfg, "train", output_url, extra, parent_run_id, run_key)
    try:
        trainer = torch_trainer(train_loop_per_worker, cfg, output_url, f"train-{cfg.name}", {"train": ds}, {
            "cfg": config_to_dict(cfg), "mlflow_uri": cfg.mlflow.resolved_uri(), "run_id": run_id,
            "fault_injection": fault_injection, "manifest": manifest,
            "tokenizer_hash": manifest["tokenizer"]["hash"] if manifest else None})
        result = trainer.fit()
        ckpt_url = publish_checkpoint(output_url, checkpoint_url(output_url, result), int(result.metrics.get("step", 0)))
        client.set_tag(run_id, "checkpoint_uri", ckpt_url)
        write_latest(output_url, ckpt_url)
        client.set_tag(run_id, "final_step", str(result.metrics.get("step")))
        if cfg.mlflow.registered_model:
            register_model(client, run_id, ckpt_url, cfg.mlflow.registered_model, cfg.mlflow.registered_alias)
        model, _ = load_model(ckpt_url)
        log_sample_grid(client, run_id, model, cfg, _tokenizer(cfg, manifest))
        client.set_terminated(run_id, "FINISHED")
        return TrainResult(ckpt_url, dict(result.metrics), run_id, int(result.metrics.get("start_step", 0)))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise


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


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a nested transformer with Ray Train (or --local)")
    add_config_args(p)
    p.add_argument("--out", required=True, help="output folder or URL (checkpoints; same URL resumes)")
    add_ray_address(p)
    p.add_argument("--local", action="store_true", help="single process, no Ray")
    p.set_defaults(func=cmd_train)
