"""Storage on any fsspec URL (local path, file://, gs://, memory://, ...).

Writes are atomic from a reader's point of view: bytes go to a temporary name in the same
folder and are moved into place, so no reader ever sees a half-written file.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Callable

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


def resolve_checkpoint(url: str, resolve_uri: Callable[[str], str] | None = None) -> str:
    """A checkpoint file URL as given; for an output folder, the file its LATEST names.
    `resolve_uri` first maps names storage does not know to a URL: the orchestration layer
    passes one for its tracking server's runs:/<id> and models:/<name>/<version>."""
    if resolve_uri is not None:
        url = resolve_uri(url)
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
