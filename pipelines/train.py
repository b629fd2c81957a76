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

import io
import logging
import os
import tempfile
import time
from dataclasses import dataclass

import torch

from nestgen.checkpoint import read_checkpoint, save_checkpoint
from nestgen.config import NestgenConfig, config_from_dict, config_to_dict, flatten
from nestgen.storage import protocol_prefix, url_to_fs

log = logging.getLogger(__name__)
CKPT_FILE = "checkpoint.pt"


def _maybe_fail(fault: dict | None, step: int) -> None:
    """Test hook: raise once at `step` (a flag file records that it happened)."""
    if fault and step == fault["step"] and not os.path.exists(fault["flag"]):
        open(fault["flag"], "w").close()
        raise RuntimeError(f"injected failure at step {step}")


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from nestgen.training.loop import NestedTrainer

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    strategy = config.get("strategy", "ddp")
    trainer = NestedTrainer(cfg, device=device, rank=rank,
                            wrap=lambda m: ray.train.torch.prepare_model(m, parallel_strategy=strategy))
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            trainer.load_state(read_checkpoint(os.path.join(d, CKPT_FILE)))
    start_step = trainer.step
    mlflow = MlflowClient(config["mlflow_uri"]) if rank == 0 and config.get("run_id") else None
    tcfg, scfg = cfg.train, cfg.scaling
    local_bs = max(1, tcfg.batch_size // world)
    shard = ray.train.get_dataset_shard("train")
    window: dict[str, float] = {}
    n_window, t0 = 0, time.perf_counter()
    while trainer.step < tcfg.steps:
        for batch in shard.iter_torch_batches(batch_size=local_bs, drop_last=True, dtypes=torch.long,
                                              local_shuffle_buffer_size=scfg.shuffle_buffer or None):
            _maybe_fail(config.get("fault_injection"), trainer.step)
            m = trainer.train_step(batch["tokens"], batch["label"])
            n_window += 1
            for k, v in m.items():
                window[k] = window.get(k, 0.0) + float(v)
            step = trainer.step
            done = step >= tcfg.steps
            if step % tcfg.log_every and step % scfg.checkpoint_every and not done:
                continue
            elapsed = time.perf_counter() - t0
            metrics = {k: v / n_window for k, v in window.items()}
            metrics.update(step=step, start_step=start_step,
                           samples_per_s=n_window * local_bs * world / elapsed,
                           tokens_per_s=n_window * local_bs * world * cfg.model.num_tokens / elapsed)
            window, n_window, t0 = {}, 0, time.perf_counter()
            if mlflow is not None:
                ts = int(time.time() * 1000)
                mlflow.log_batch(config["run_id"], metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()
                                                            if k not in ("step", "start_step")])
            if step % scfg.checkpoint_every == 0 or done:
                with tempfile.TemporaryDirectory() as d:
                    ck = None
                    if rank == 0:
                        save_checkpoint(os.path.join(d, CKPT_FILE), cfg, trainer.core, **trainer.state(),
                                        tokenizer_hash=config.get("tokenizer_hash"))
                        ck = ray.train.Checkpoint.from_directory(d)
                    ray.train.report(metrics, checkpoint=ck, checkpoint_dir_name=f"checkpoint_{step:08d}")
            else:
                ray.train.report(metrics)
            if done:
                break


@dataclass
class TrainResult:
    checkpoint_url: str
    metrics: dict
    run_id: str | None
    start_step: int


def _mlflow_run(cfg: NestgenConfig, manifest: dict | None, output_url: str):
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cfg.mlflow.resolved_uri())
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.mlflow.experiment)
    run = client.create_run(exp_id, run_name=f"train-{cfg.name}", tags={"nestgen.step": "train",
                                                                          "output_url": output_url})
    params = {k: str(v)[:6000] for k, v in flatten(config_to_dict(cfg)).items()}
    if manifest:
        params.update({"data.manifest_url": cfg.data.url, "data.tokenizer_hash": manifest["tokenizer"]["hash"],
                       "data.input_fingerprint": manifest["input_fingerprint"]})
    items = list(params.items())
    for i in range(0, len(items), 100):                  # MLflow caps a batch at 100 params
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    return client, run.info.run_id


def log_sample_grid(client, run_id: str, cfg: NestgenConfig, checkpoint_url: str, manifest: dict | None,
                    name: str = "samples_by_nested_size.png") -> None:
    """One row of class-conditional samples per nested size (schedule FxK, no cache)."""
    from dataclasses import replace

    from nestgen.checkpoint import load_model
    from nestgen.decoding.maskgit import decode
    from nestgen.images import png_bytes
    from nestgen.render import sample_sheet, tokens_to_pixels
    model, mcfg = load_model(checkpoint_url)
    tok = None
    if manifest:
        from nestgen.tokenizers import load_tokenizer
        tok = load_tokenizer(manifest["tokenizer"]["url"])
    n = max(1, min(10, mcfg.model.num_classes))
    rows = []
    for f in sorted(mcfg.model.nest_factors):
        d = replace(mcfg.decode, schedule=f"{f}x{mcfg.decode.steps}", cache="none")
        tokens = decode(model, torch.arange(n), d, seeds=range(n)).tokens
        rows.append(tokens_to_pixels(tokens, mcfg.model.grid, tok))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as f:
            f.write(png_bytes(sample_sheet(rows, scale=4 if tok is None else 2)))
        client.log_artifact(run_id, path)


def fit(cfg: NestgenConfig, output_url: str, fault_injection: dict | None = None,
        strategy: str = "ddp") -> TrainResult:
    """Train on the current Ray cluster (ray.init done by the caller); see the module doc."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipelines.arrow_fs import arrow_filesystem
    from pipelines.train_data import token_dataset

    ds, manifest = token_dataset(cfg)
    client, run_id = _mlflow_run(cfg, manifest, output_url)
    try:
        use_gpu = {"yes": True, "no": False}.get(cfg.scaling.use_gpu,
                                                 ray.cluster_resources().get("GPU", 0) > 0)
        fs, storage = url_to_fs(output_url)
        fs.makedirs(storage, exist_ok=True)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": config_to_dict(cfg), "mlflow_uri": cfg.mlflow.resolved_uri(),
                               "run_id": run_id, "fault_injection": fault_injection, "strategy": strategy,
                               "tokenizer_hash": manifest["tokenizer"]["hash"] if manifest else None},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.scaling.num_workers, use_gpu=use_gpu,
                resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
            run_config=ray.train.RunConfig(
                name=f"train-{cfg.name}", storage_path=storage, storage_filesystem=arrow_filesystem(output_url),
                failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.scaling.keep_checkpoints)),
            datasets={"train": ds},
        )
        result = trainer.fit()
        ckpt_url = protocol_prefix(output_url) + result.checkpoint.path.rstrip("/") + "/" + CKPT_FILE
        client.set_tag(run_id, "checkpoint_uri", ckpt_url)
        client.set_tag(run_id, "final_step", str(result.metrics.get("step")))
        log_sample_grid(client, run_id, cfg, ckpt_url, manifest)
        client.set_terminated(run_id, "FINISHED")
        return TrainResult(ckpt_url, dict(result.metrics), run_id, int(result.metrics.get("start_step", 0)))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
