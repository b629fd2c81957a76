"""Storage on any fsspec URL (local path, file://, gs://, memory://, ...).

Writes are atomic from a reader's point of view: bytes go to a temporary name in the same
folder and are moved into place, so no reader ever sees a half-written file.
"""
from __future__ import annotations

import json
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


def resolve_checkpoint(url: str) -> str:
    """A checkpoint file URL as given, or, for an output folder, the file its LATEST names."""
    fs, path = url_to_fs(url)
    if fs.isdir(path):
        pointer = join(url, LATEST)
        if not fs.exists(url_to_fs(pointer)[1]):
            raise FileNotFoundError(f"{url} is a folder without a {LATEST} file: no finished run wrote it")
        return read_bytes(pointer).decode().strip()
    return url


def write_latest(output_url: str, checkpoint_url: str) -> None:
    write_bytes_atomic(join(output_url, LATEST), checkpoint_url.encode())
