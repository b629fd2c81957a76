"""What every Ray Train loop of nestgen shares: the MLflow run, metric windows, and the
report/checkpoint cadence (all ranks report together; rank 0 writes the checkpoint)."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

from nestgen.config import config_to_dict, flatten
from pipelines.config import RunConfig

CKPT_FILE = "checkpoint.pt"


def maybe_fail(fault: dict | None, step: int) -> None:
    """Test hook: raise once at `step` (a flag file records that it happened)."""
    if fault and step == fault["step"] and not os.path.exists(fault["flag"]):
        open(fault["flag"], "w").close()
        raise RuntimeError(f"injected failure at step {step}")


RUN_KEY_TAG = "nestgen.run_key"


def mlflow_run(cfg: RunConfig, step_name: str, output_url: str, extra_params: dict | None = None,
               parent_run_id: str | None = None, run_key: str = ""):
    """(client, run_id) of a new run with every config value as a param (a child run of
    parent_run_id when given, e.g. a step of a pipeline run). With run_key (a DAG step's
    fingerprint) the run tagged with that key is reused when there is one: a retried or
    resumed step continues its run instead of adding another."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cfg.mlflow.resolved_uri())
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.mlflow.experiment)
    if run_key:
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            if parent_run_id:                  # shown under the pipeline run that resumed it
                client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
            return client, run_id              # its params: logged at creation (same key, same config)
    run = client.create_run(exp_id, run_name=f"{step_name}-{cfg.name}",
                            tags={"nestgen.step": step_name, "output_url": output_url,
                                  **({RUN_KEY_TAG: run_key} if run_key else {}),
                                  **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})})
    params = {k: str(v)[:6000] for k, v in flatten(config_to_dict(cfg)).items()}
    params.update({k: str(v) for k, v in (extra_params or {}).items()})
    items = list(params.items())
    for i in range(0, len(items), 100):                  # MLflow caps a batch at 100 params
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
    return client, run.info.run_id


class Reporter:
    """Averages step metrics over a window; at log steps reports them (and logs them to
    MLflow from rank 0); at checkpoint steps also hands Ray a checkpoint written by `save`."""

    def __init__(self, config: dict, rank: int, log_every: int, checkpoint_every: int,
                 samples_per_step: int, tokens_per_sample: int = 0):
        from mlflow.tracking import MlflowClient
        self.run_id = config.get("run_id")
        self.mlflow = MlflowClient(config["mlflow_uri"]) if rank == 0 and self.run_id else None
        self.rank, self.log_every, self.ckpt_every = rank, log_every, checkpoint_every
        self.samples, self.tokens = samples_per_step, tokens_per_sample
        self.window: dict[str, float] = {}
        self.n, self.t0 = 0, time.perf_counter()

    def step(self, step: int, metrics: dict, done: bool, save: Callable[[str], None], **extra) -> None:
        import ray.train
        from mlflow.entities import Metric
        self.n += 1
        for k, v in metrics.items():
            self.window[k] = self.window.get(k, 0.0) + float(v)
        is_ckpt = step % self.ckpt_every == 0 or done
        if step % self.log_every and not is_ckpt:
            return
        elapsed = time.perf_counter() - self.t0
        out = {k: v / self.n for k, v in self.window.items()}
        out["samples_per_s"] = self.n * self.samples / elapsed
        if self.tokens:
            out["tokens_per_s"] = out["samples_per_s"] * self.tokens
        self.window, self.n, self.t0 = {}, 0, time.perf_counter()
        if self.mlflow is not None:
            ts = int(time.time() * 1000)
            self.mlflow.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in out.items()])
        out.update(step=step, **extra)
        if not is_ckpt:
            ray.train.report(out)
            return
        with tempfile.TemporaryDirectory() as d:
            ck = None
            if self.rank == 0:
                save(os.path.join(d, CKPT_FILE))
                ck = ray.train.Checkpoint.from_directory(d)
            ray.train.report(out, checkpoint=ck, checkpoint_dir_name=f"checkpoint_{step:08d}")


def torch_trainer(loop, cfg: RunConfig, output_url: str, name: str, datasets: dict, loop_config: dict):
    """A TorchTrainer from cfg.scaling: GPU workers when the cluster has GPUs (unless
    use_gpu says otherwise), storage at output_url through its fsspec filesystem."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from nestgen.storage import url_to_fs
    from pipelines.arrow_fs import arrow_filesystem
    sc = cfg.scaling
    use_gpu = {"yes": True, "no": False}.get(sc.use_gpu, ray.cluster_resources().get("GPU", 0) > 0)
    fs, storage = url_to_fs(output_url)
    fs.makedirs(storage, exist_ok=True)
    return TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, storage_filesystem=arrow_filesystem(output_url),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=sc.keep_checkpoints)),
        datasets=datasets)


def checkpoint_url(output_url: str, result) -> str:
    """URL of the checkpoint file inside a Ray Train result's latest checkpoint."""
    from nestgen.storage import protocol_prefix
    return protocol_prefix(output_url) + result.checkpoint.path.rstrip("/") + "/" + CKPT_FILE
