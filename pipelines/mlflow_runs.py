"""The MLflow runs nestgen records: one per pipeline run, a child per step.

    with start_run(cfg, "train", output_url, params, parent_run_id) as run:
        ...                                        # FINISHED on exit, FAILED (and re-raised) on error
        run.set_tags(...); run.log_metrics(...); run.log_bytes(...); run.log_image(...)
        run.log_dataset(url, digest, name)         # a dataset input of the run
        with run.system_metrics(every_s): ...      # CPU, memory, GPU as system/* metrics
    Run.attach(tracking_uri, run_id)               # the same run from a Ray Train worker
    runs_page_url(cfg, experiment_id)              # the UI's runs table of the experiment

A run's params are every config value (flattened) plus the step's own; runs of one pipeline
run are its children (the `mlflow.parentRunId` tag); every run records the code that ran
(user, entry point, git commit). Experiments are created as model-development experiments;
MLflow 3.17's UI still opens them as GenAI until its mode switch is set (UI_MODE_HINT). The
tracking server is cfg.mlflow.resolved_uri(). The models a run logs and the registry are
pipelines.model_registry's. mlflow is imported lazily: importing this module is cheap.
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
import warnings
from typing import Iterator

from nestgen.config import config_to_dict
from nestgen.configschema import flatten
from nestgen.storage import read_bytes
from pipelines.config import RunConfig


PARAMS_PER_BATCH = 100                   # MLflow's cap on params in one log_batch
RUN_KEY_TAG = "nestgen.run_key"
# Earlier MLflow 3 UIs open an experiment without this tag in their GenAI mode (traces) and one
# of this kind on its runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow 3.17's UI ignores that tag: every experiment opens in the mode of the GenAI / Model
# training switch at the top left of its pages, GenAI until a person clicks it; the choice is
# kept in the browser (localStorage `mlflow.workflowType_v1`). Neither the server nor an
# experiment setting picks it, and a link's `workflowType=machine_learning` holds for that page
# only (runs_page_url), so the closing summary and the README say which switch to click.
UI_MODE_SWITCH = ("GenAI", "Model training")
UI_MODE_HINT = (f"clicking from the UI's home page: set the switch at its top left from {UI_MODE_SWITCH[0]} to "
                f"{UI_MODE_SWITCH[1]} first (MLflow opens experiments as GenAI traces until then; the browser "
                "keeps the choice)")
DIGEST_CHARS = 36                        # MLflow's column width for a dataset digest


class Run:
    """One MLflow run. As a context manager it ends FINISHED, or FAILED when the block raises
    (the exception propagates)."""

    def __init__(self, client, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> Run:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri)
        return cls(client, run_id, client.get_run(run_id).info.experiment_id)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.end("FAILED" if exc_type else "FINISHED")
        return False

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def child(self, name: str, step: str) -> Run:
        """A new run under this one (same experiment), tagged with its pipeline step."""
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": self.run_id, "nestgen.step": step})
        return Run(self.client, run.info.run_id, self.experiment_id)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def log_bytes(self, name: str, data: bytes, artifact_path: str | None = None) -> None:
        """An artifact called `name` holding `data` (MLflow logs files: it goes through a temp dir)."""
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path, artifact_path)

    def log_files(self, urls: list[str], artifact_path: str | None = None) -> None:
        """Copies of (maybe remote) files as artifacts, under their base names."""
        for url in urls:
            self.log_bytes(os.path.basename(url), read_bytes(url), artifact_path)

    def log_image(self, key: str, image, step: int = 0) -> None:
        """An image (uint8 array, or PNG bytes) under `key` at `step`: the UI shows a key's
        images with a step slider."""
        import io

        import numpy as np
        from PIL import Image
        img = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else np.asarray(image)
        self.client.log_image(self.run_id, img, key=key, step=step, synchronous=True)

    def log_dataset(self, url: str, digest: str, name: str, context: str = "training") -> None:
        """The data at `url` (a folder, index or shard set, read by this run) as a dataset
        input with its digest; the runs table shows it. Storage MLflow cannot name (memory://)
        is not logged."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException
        if "://" not in url:
            url = os.path.abspath(url)
        try:
            with warnings.catch_warnings():     # local paths match two equivalent source kinds
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(url)
        except MlflowException:
            return
        ds = MetaDataset(source, name=name, digest=digest[:DIGEST_CHARS])._to_mlflow_entity()
        self.client.log_inputs(self.run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", context)])])

    @contextlib.contextmanager
    def system_metrics(self, every_s: float, node_id: str | None = None) -> Iterator[None]:
        """CPU, memory, disk, network and (with nvidia-ml-py) GPU use of this machine, sampled
        every `every_s` seconds as system/* metrics of the run by MLflow's own monitor, while
        the block runs. Off when every_s is 0 or psutil is missing (MLflow's own behaviour)."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as e:
            if every_s > 0:
                print(f"[mlflow] no system metrics: {e} (pip install psutil)", flush=True)
            every_s = 0
        if every_s <= 0:
            yield
            return
        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=every_s, node_id=node_id,
                                       resume_logging=True, tracking_uri=self.client.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()


def start_run(cfg: RunConfig, step: str, output_url: str, params: dict | None = None,
              parent_run_id: str | None = None, run_key: str = "") -> Run:
    """A new run `<step>-<cfg.name>` in cfg.mlflow.experiment with every config value and
    `params` as params (a child of parent_run_id when given, e.g. a step of a pipeline run).
    With run_key (a DAG step's fingerprint) the run tagged with that key is reused when there
    is one: a retried or resumed step continues its run instead of adding another."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cfg.mlflow.resolved_uri())
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    if run_key:
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        if found:
            run = Run(client, found[0].info.run_id, exp_id)
            client.update_run(run.run_id, status="RUNNING")
            if parent_run_id:                  # shown under the pipeline run that resumed it
                run.set_tags({"mlflow.parentRunId": parent_run_id})
            return run                         # its params: logged at creation (same key, same config)
    tags = {"nestgen.step": step, "output_url": output_url, **source_tags(),
            **({RUN_KEY_TAG: run_key} if run_key else {}),
            **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run = Run(client, client.create_run(exp_id, run_name=f"{step}-{cfg.name}", tags=tags).info.run_id, exp_id)
    run.log_params({**{k: str(v)[:6000] for k, v in flatten(config_to_dict(cfg)).items()}, **(params or {})})
    return run


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created if missing. An experiment without a kind gets
    EXPERIMENT_KIND (one a user chose in the UI is kept)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
    if EXPERIMENT_KIND[0] not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


@functools.cache
def _code_tags() -> dict:
    """MLflow's own source tags of this process (user, entry point), and the git commit of the
    checkout this package runs from (none when it is not a git checkout, e.g. an image)."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.git_utils import get_git_commit
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT
    tags = {k: v for k, v in resolve_tags().items() if k.startswith(("mlflow.source.", "mlflow.user"))}
    tags.pop(MLFLOW_GIT_COMMIT, None)          # found from the entry point, which may be another checkout
    commit = get_git_commit(os.path.dirname(os.path.abspath(__file__)))
    return tags | ({MLFLOW_GIT_COMMIT: commit} if commit else {})


def source_tags() -> dict:
    return dict(_code_tags())


def runs_page_url(cfg: RunConfig, experiment: str) -> str:
    """Where the MLflow UI lists the runs of experiment id `experiment`: on the tracking
    server itself, or on `mlflow ui` (127.0.0.1:5000) for a database or folder store."""
    uri = cfg.mlflow.resolved_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"
