"""The skeleton every Ray Train step of nestgen runs in; a trainer plugs in a `WorkerJob`.

    driver: fit_on_workers(loop, cfg, output_url, name, dataset, run, loop_config)
            -> TorchTrainer from cfg.scaling -> final checkpoint, published (an immutable
            copy): tagged on the run as checkpoint_uri and named by output_url's LATEST
    worker: run_worker(config, setup): setup(Worker) -> WorkerJob; resume from Ray's last
            checkpoint; batches of the "train" shard until job.steps; metric windows
            reported by every rank (rank 0 also logs them, and its machine's system
            metrics, to MLflow) and, every
            scaling.checkpoint_every steps and at the end, a checkpoint: every rank calls
            job.save (a sharded model's state is gathered collectively), rank 0 writes it
            beside its data position.

Resuming: a fit with the same output URL (Ray's storage_path) and name continues from the
last reported checkpoint; a worker failure is retried (FailureConfig) from that checkpoint,
whose optimizer/scheduler/step state makes the step count exact. The data stream continues
too: the checkpoint records the epoch and the batches of it already trained on
(DATA_POSITION_FILE), and a resumed worker passes over those batches of that epoch's
iteration, which is the same as the interrupted run's (the block order and each epoch's
local shuffle are seeded), so it trains on the batches the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from nestgen.config import config_to_dict
from nestgen.training.metric_window import MetricWindow
from nestgen.checkpoint_files import publish_checkpoint, write_latest
from nestgen.storage import protocol_prefix
from pipelines import lease
from pipelines.config import RunConfig, run_config_from_dict
from pipelines.mlflow_runs import Run

CKPT_FILE = "checkpoint.pt"
DATA_POSITION_FILE = "data_position.json"    # {"epoch": e, "batches": b}: b batches of epoch e trained on


@dataclass
class Worker:
    """One Ray Train worker, as a trainer's setup sees it."""
    cfg: RunConfig
    config: dict                 # the loop config the driver passed (beyond cfg and the run)
    rank: int
    world: int
    device: torch.device
    run: Run | None              # the step's MLflow run, on rank 0

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` on this worker's device, wrapped for DDP. (scaling.strategy fsdp shards the
        generator's objective instead: nestgen.training.sharding, see pipelines.train.)"""
        import ray.train.torch
        return ray.train.torch.prepare_model(module, parallel_strategy="ddp")


@dataclass
class WorkerJob:
    """What a trainer plugs into `run_worker`."""
    trainer: Any                          # its `step` counts the optimizer steps taken
    steps: int                            # train until trainer.step reaches this
    batch_size: int                       # global: each of N workers takes batch_size // N
    log_every: int
    batch_dtype: torch.dtype
    train_step: Callable[[dict], dict]    # one batch of the "train" shard -> metrics
    save: Callable[[str | None], None]    # every rank: gather the state; rank 0 (given the path) writes it
    load: Callable[[str], None]           # resume from one
    seed: int = 0                         # the local shuffle of each worker's batches
    tokens_per_sample: int = 0            # > 0: also report tokens_per_s
    after_step: Callable[[bool], None] | None = None    # called with `done` after each report


class Reporter:
    """Averages step metrics over a window; at log steps reports them (and logs them to the
    MLflow run from rank 0); at checkpoint steps also hands Ray a checkpoint written by `save`."""

    def __init__(self, worker: Worker, log_every: int, samples_per_step: int, tokens_per_sample: int = 0,
                 total_steps: int = 0):
        self.run, self.rank = worker.run, worker.rank
        # the driver's progress bar (pipelines.console.RemoteBar), moved by rank 0
        self.progress = worker.config.get("progress") if worker.rank == 0 else None
        self.total = total_steps
        self.log_every, self.ckpt_every = log_every, worker.cfg.scaling.checkpoint_every
        self.samples, self.tokens = samples_per_step, tokens_per_sample
        self.window, self.t0 = MetricWindow(), time.perf_counter()

    def step(self, step: int, metrics: dict, done: bool, save: Callable[[str], None],
             position: tuple[int, int], **extra) -> None:
        """`position`: (epoch, batches of it trained on), written beside a checkpoint."""
        import ray.train
        self.window.add(metrics)
        is_ckpt = step % self.ckpt_every == 0 or done
        if step % self.log_every and not is_ckpt:
            return
        elapsed = time.perf_counter() - self.t0
        out = self.window.means()
        out["samples_per_s"] = self.window.steps * self.samples / elapsed
        if self.tokens:
            out["tokens_per_s"] = out["samples_per_s"] * self.tokens
        self.window.reset()
        self.t0 = time.perf_counter()
        if self.run is not None:
            self.run.log_metrics(out, step)
        if self.progress is not None:
            loss = out.get("loss", out.get("loss/f1"))          # the tokenizer's, or the full-size model's
            sent = self.progress.set.remote(step, self.total, **({"loss": loss} if loss is not None else {}))
            if done:
                ray.get(sent)                 # delivered before this worker exits
        out.update(step=step, **extra)
        if not is_ckpt:
            ray.train.report(out)
            return
        with tempfile.TemporaryDirectory() as d:
            ck = None
            save(os.path.join(d, CKPT_FILE) if self.rank == 0 else None)
            if self.rank == 0:
                with open(os.path.join(d, DATA_POSITION_FILE), "w") as f:
                    json.dump({"epoch": position[0], "batches": position[1]}, f)
                ck = ray.train.Checkpoint.from_directory(d)
            ray.train.report(out, checkpoint=ck, checkpoint_dir_name=f"checkpoint_{step:08d}")


def run_worker(config: dict, setup: Callable[[Worker], WorkerJob]) -> None:
    """The body of a Ray Train loop: set up, resume, train to job.steps (see the module doc)."""
    import ray.train
    import ray.train.torch
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    run = Run.attach(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    worker = Worker(run_config_from_dict(config["cfg"]), config, rank, ctx.get_world_size(),
                    ray.train.torch.get_device(), run)
    job = setup(worker)
    epoch, skip = 0, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            job.load(os.path.join(d, CKPT_FILE))
            epoch, skip = _data_position(d)
    start_step = job.trainer.step
    local_bs = max(1, job.batch_size // worker.world)
    reporter = Reporter(worker, job.log_every, local_bs * worker.world, job.tokens_per_sample, job.steps)
    shard = ray.train.get_dataset_shard("train")
    # rank 0's machine: where the run's metrics come from
    with run.system_metrics(worker.cfg.mlflow.system_metrics_every_s) if run else contextlib.nullcontext():
        while job.trainer.step < job.steps:
            # a different shuffle on every rank and epoch, the same on every run
            shuffle_seed = (job.seed * 1_000_003 + epoch * 1009 + worker.rank) % 2**32
            taken = 0
            for batch in shard.iter_torch_batches(batch_size=local_bs, drop_last=True, dtypes=job.batch_dtype,
                                                  local_shuffle_buffer_size=worker.cfg.scaling.shuffle_buffer or None,
                                                  local_shuffle_seed=shuffle_seed):
                taken += 1
                if taken <= skip:        # trained on before the checkpoint this run resumed from
                    continue
                metrics = job.train_step(batch)
                done = job.trainer.step >= job.steps
                reporter.step(job.trainer.step, metrics, done, job.save, (epoch, taken), start_step=start_step)
                if job.after_step is not None:
                    job.after_step(done)
                if done:
                    break
            epoch, skip = epoch + 1, 0


def _data_position(folder: str) -> tuple[int, int]:
    """(epoch, batches of it trained on) of a checkpoint folder; (0, 0) for a checkpoint
    written before positions were recorded (its run restarts the data stream)."""
    path = os.path.join(folder, DATA_POSITION_FILE)
    if not os.path.exists(path):
        return 0, 0
    with open(path) as f:
        p = json.load(f)
    return int(p["epoch"]), int(p["batches"])


def torch_trainer(loop, cfg: RunConfig, output_url: str, name: str, datasets: dict, loop_config: dict):
    """A TorchTrainer from cfg.scaling: GPU workers when the cluster has GPUs (unless
    use_gpu says otherwise), storage at output_url through its fsspec filesystem, the
    torch.distributed rendezvous on the node's Ray address only (pipelines.rendezvous)."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from nestgen.storage import url_to_fs
    from pipelines.arrow_fs import arrow_filesystem
    from pipelines.rendezvous import NodeAddressTorchConfig
    sc = cfg.scaling
    use_gpu = {"yes": True, "no": False}.get(sc.use_gpu, ray.cluster_resources().get("GPU", 0) > 0)
    # Ordered execution makes the split into worker shards deterministic (Ray otherwise
    # hands blocks to whichever worker asks first): with the seeded block order and local
    # shuffle, every worker sees the same batches on every run.
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True
    fs, storage = url_to_fs(output_url)
    fs.makedirs(storage, exist_ok=True)
    return TorchTrainer(
        loop, train_loop_config=loop_config, torch_config=NodeAddressTorchConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": sc.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage, storage_filesystem=arrow_filesystem(output_url),
            # controller_failure_limit: Ray's default (-1) retries a worker group that cannot be placed
            # (a lost node held its resources) for ever, every RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S:
            # the step would hang; after max_failures such starts it fails (pipelines.errors says why)
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures,
                                                   controller_failure_limit=sc.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=sc.keep_checkpoints)),
        datasets=datasets, dataset_config=ray.train.DataConfig(execution_options=ingest))


@contextlib.contextmanager
def _keeps_sigint():
    """The SIGINT handler as it was before, on the way out: Ray Train V2's fit() installs its
    own (to abort the run) and leaves it there, so Ctrl-C no longer stopped `nestgen run`
    once training was over. Only the main thread may set handlers (and only it gets signals)."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGINT, previous)


def fit_on_workers(loop, cfg: RunConfig, output_url: str, name: str, dataset, run: Run,
                   loop_config: dict | None = None):
    """(Ray's result, URL of its published final checkpoint) of `loop` (a Ray Train loop
    calling run_worker) trained on `dataset` as "train"; the URL is tagged on `run` as
    checkpoint_uri and named by output_url's LATEST. Ray must be initialized. Progress
    (step/total, loss, ETA) shows as a console bar."""
    from pipelines.console import RemoteBar
    with RemoteBar(name, "step") as bar, _keeps_sigint():
        result = torch_trainer(loop, cfg, output_url, name, {"train": dataset}, {
            "cfg": config_to_dict(cfg), "tracking_uri": cfg.mlflow.resolved_uri(), "run_id": run.run_id,
            "progress": bar.feed, **(loop_config or {})}).fit()
    trained = protocol_prefix(output_url) + result.checkpoint.path.rstrip("/") + "/" + CKPT_FILE
    lease.check(output_url)               # a writer that lost the folder's lease publishes nothing there
    url = publish_checkpoint(output_url, trained, int(result.metrics.get("step", 0)))
    run.set_tags({"checkpoint_uri": url})
    lease.check(output_url)
    write_latest(output_url, url)
    return result, url
