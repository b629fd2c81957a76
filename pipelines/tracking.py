"""Everything nestgen tells MLflow (and asks it), in one place.

    with start_run(cfg, "train", output_url, params, parent_run_id) as run:
        ...                                        # FINISHED on exit, FAILED (and re-raised) on error
        run.set_tags(...); run.log_metrics(...); run.log_bytes(...)
        register_model(run, checkpoint_url, name, alias)
    Run.attach(tracking_uri, run_id)               # the same run from a Ray Train worker
    resolve_checkpoint("models:/<name>@<alias>")   # runs:/ and models:/ -> the checkpoint's URL
    pin_model_version("models:/<name>@<alias>")    # -> models:/<name>/<version> it names now

A run's params are every config value (flattened) plus the step's own; runs of one pipeline
run are its children (the `mlflow.parentRunId` tag). The tracking server is
cfg.mlflow.resolved_uri(). mlflow is imported lazily: importing this module is cheap.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

from nestgen.config import config_to_dict
from nestgen.configschema import flatten
from nestgen.storage import read_bytes
from nestgen.storage import resolve_checkpoint as resolve_storage_checkpoint
from pipelines.config import MlflowConfig, RunConfig

PARAMS_PER_BATCH = 100                   # MLflow's cap on params in one log_batch
RUN_KEY_TAG = "nestgen.run_key"


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


def start_run(cfg: RunConfig, step: str, output_url: str, params: dict | None = None,
              parent_run_id: str | None = None, run_key: str = "") -> Run:
    """A new run `<step>-<cfg.name>` in cfg.mlflow.experiment with every config value and
    `params` as params (a child of parent_run_id when given, e.g. a step of a pipeline run).
    With run_key (a DAG step's fingerprint) the run tagged with that key is reused when there
    is one: a retried or resumed step continues its run instead of adding another."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cfg.mlflow.resolved_uri())
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.mlflow.experiment)
    if run_key:
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        if found:
            run = Run(client, found[0].info.run_id, exp_id)
            client.update_run(run.run_id, status="RUNNING")
            if parent_run_id:                  # shown under the pipeline run that resumed it
                run.set_tags({"mlflow.parentRunId": parent_run_id})
            return run                         # its params: logged at creation (same key, same config)
    tags = {"nestgen.step": step, "output_url": output_url,
            **({RUN_KEY_TAG: run_key} if run_key else {}),
            **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run = Run(client, client.create_run(exp_id, run_name=f"{step}-{cfg.name}", tags=tags).info.run_id, exp_id)
    run.log_params({**{k: str(v)[:6000] for k, v in flatten(config_to_dict(cfg)).items()}, **(params or {})})
    return run


def register_model(run: Run, checkpoint_url: str, name: str, alias: str = "") -> str:
    """The version of registered model `name` for this run's checkpoint (served as
    models:/<name>/<v>, or models:/<name>@<alias>); the run's checkpoint_uri tag is what the
    version resolves to. A checkpoint already registered for this run (a retried or resumed
    step) keeps its version: one version per trained checkpoint."""
    from mlflow.exceptions import MlflowException
    client = run.client
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass                                   # it exists: add a version
    same = [v for v in client.search_model_versions(f"name = '{name}' and run_id = '{run.run_id}'")
            if v.tags.get("checkpoint_uri") == checkpoint_url]
    # The source is the run (servers refuse plain paths outside a run's artifacts); the
    # checkpoint itself is the run's checkpoint_uri tag, copied onto the version for readers.
    version = same[0].version if same else client.create_model_version(
        name, source=f"runs:/{run.run_id}/checkpoint", run_id=run.run_id,
        tags={"checkpoint_uri": checkpoint_url}).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    run.set_tags({"registered_model": f"models:/{name}/{version}"})
    return str(version)


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(MlflowConfig(tracking_uri=tracking_uri).resolved_uri())


def pin_model_version(uri: str, tracking_uri: str = "") -> str:
    """models:/<name>@<alias> -> models:/<name>/<version> the alias names now; any other URI
    as given."""
    if not (uri.startswith("models:/") and "@" in uri):
        return uri
    name, alias = uri[len("models:/"):].strip("/").split("@", 1)
    return f"models:/{name}/{_client(tracking_uri).get_model_version_by_alias(name, alias).version}"


RUN_SCHEMES = ("runs:/", "mlflow-run:", "models:/")


def _run_id(client, uri: str) -> str:
    """runs:/<id>[/...] and mlflow-run:<id> name the run; models:/<name>/<version> and
    models:/<name>@<alias> name a registered model version, whose run trained it."""
    if uri.startswith("models:/"):
        ref = uri[len("models:/"):].strip("/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = ref.rpartition("/")
        if not name or not version.isdigit():
            raise ValueError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
        return client.get_model_version(name, version).run_id
    return uri.split(":", 1)[1].lstrip("/").split("/", 1)[0]


def checkpoint_resolver(tracking_uri: str = "") -> Callable[[str], str]:
    """For nestgen.storage.resolve_checkpoint: a training run (runs:/<id>, mlflow-run:<id>) or
    registered model version (models:/<name>/<version>, models:/<name>@<alias>) -> the
    `checkpoint_uri` its training tagged; any other URL unchanged. MLflow at tracking_uri
    ("" -> MlflowConfig's default)."""
    def resolve(uri: str) -> str:
        if not uri.startswith(RUN_SCHEMES):
            return uri
        client = _client(tracking_uri)
        run_id = _run_id(client, uri)
        tags = client.get_run(run_id).data.tags
        if "checkpoint_uri" not in tags:
            raise FileNotFoundError(f"MLflow run {run_id} has no checkpoint_uri tag: it is not a finished training run")
        return tags["checkpoint_uri"]
    return resolve


def resolve_checkpoint(url: str, tracking_uri: str = "") -> str:
    """nestgen.storage.resolve_checkpoint that also follows runs:/ and models:/ URIs."""
    return resolve_storage_checkpoint(url, checkpoint_resolver(tracking_uri))
