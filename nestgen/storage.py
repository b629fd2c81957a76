"""Storage on any fsspec URL (local path, file://, gs://, memory://, ...).

Writes are atomic from a reader's point of view: bytes go to a temporary name in the same
folder and are moved into place, so no reader ever sees a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import fsspec


def url_to_fs(url: str):
    return fsspec.core.url_to_fs(url)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def write_bytes_atomic(url: str, data: bytes) -> str:
    fs, path = url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)
    return url


def write_json_atomic(url: str, obj: Any) -> str:
    return write_bytes_atomic(url, json.dumps(obj, indent=1, sort_keys=False).encode())


def read_bytes(url: str) -> bytes:
    with fsspec.open(url, "rb") as f:
        return f.read()


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def remove_tree(url: str) -> None:
    fs, path = url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def protocol_prefix(url: str) -> str:
    """'gs://' for gs://b/x, '' for local paths: to turn fs paths back into URLs."""
    return url.split("://", 1)[0] + "://" if "://" in url else ""


LATEST = "LATEST"


MLFLOW_RUN_SCHEMES = ("runs:/", "mlflow-run:", "models:/")


def _mlflow_run_id(client, uri: str) -> str:
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


def mlflow_tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI: `uri`, else $MLFLOW_TRACKING_URI, else ./mlflow.db (SQLite)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.abspath('mlflow.db')}"


def mlflow_run_checkpoint(uri: str, tracking_uri: str | None = None) -> str:
    """The `checkpoint_uri` tag of a training run named as runs:/<run_id>, mlflow-run:<run_id>
    or by a registered model version (models:/<name>/<version>, models:/<name>@<alias>)
    (MLflow from tracking_uri, else $MLFLOW_TRACKING_URI / ./mlflow.db)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_tracking_uri(tracking_uri))
    run_id = _mlflow_run_id(client, uri)
    tags = client.get_run(run_id).data.tags
    if "checkpoint_uri" not in tags:
        raise FileNotFoundError(f"MLflow run {run_id} has no checkpoint_uri tag: it is not a finished training run")
    return tags["checkpoint_uri"]


def resolve_checkpoint(url: str, tracking_uri: str | None = None) -> str:
    """A checkpoint file URL as given; for an output folder, the file its LATEST names; for an
    MLflow run (runs:/<id>, mlflow-run:<id>) or registered model (models:/<name>/<version>),
    the checkpoint its training tagged."""
    if url.startswith(MLFLOW_RUN_SCHEMES):
        return resolve_checkpoint(mlflow_run_checkpoint(url, tracking_uri))
    fs, path = url_to_fs(url)
    if fs.isdir(path):
        pointer = join(url, LATEST)
        if not fs.exists(url_to_fs(pointer)[1]):
            raise FileNotFoundError(f"{url} is a folder without a {LATEST} file: no finished run wrote it")
        return read_bytes(pointer).decode().strip()
    return url


def write_latest(output_url: str, checkpoint_url: str) -> None:
    write_bytes_atomic(join(output_url, LATEST), checkpoint_url.encode())


PUBLISHED = "published"


def publish_checkpoint(output_url: str, checkpoint_url: str, step: int) -> str:
    """An immutable copy of a checkpoint: <output_url>/published/step<step>-<sha256[:12]>.pt.

    What LATEST, an MLflow run's checkpoint_uri or a registered model version names must
    outlive the trainer's own folder, whose rotation (num_to_keep) and resumed runs delete
    and rewrite checkpoints. Nothing deletes or rewrites published/: the name carries the
    content hash, so publishing the same checkpoint again is a no-op and another one never
    takes its name."""
    data = read_bytes(checkpoint_url)
    url = join(output_url, PUBLISHED, f"step{step:08d}-{hashlib.sha256(data).hexdigest()[:12]}.pt")
    if not exists(url):
        write_bytes_atomic(url, data)
    return url
