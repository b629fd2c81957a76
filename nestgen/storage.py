"""Storage on any fsspec URL (local path, file://, gs://, memory://, ...).

Writes are atomic from a reader's point of view: an object store (gs://, s3://, memory://)
gets the bytes as one object upload, which is visible whole or not at all; any other
filesystem gets them under a temporary name in the same folder, moved into place, so no
reader ever sees a half-written file. A write that fails transiently (a dropped connection,
a timeout) is retried a bounded number of times (`retry_transient`, the one retry policy
of nestgen's storage writes); a failed attempt leaves nothing behind. Checkpoints on top of
this (read as data, published, LATEST) are nestgen.checkpoint_files'.
"""
from __future__ import annotations

import json
import logging
import random
import time
import uuid
from typing import Any, Callable, TypeVar

import fsspec


def url_to_fs(url: str):
    return fsspec.core.url_to_fs(url)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


log = logging.getLogger(__name__)
T = TypeVar("T")

WRITE_ATTEMPTS = 4
# before retry k (1, 2, ...): BACKOFF_S * 2**(k-1), +-20% so writers that failed together
# do not retry together; 4 attempts wait about 1.4 s in all, far inside a lease's TTL
BACKOFF_S = 0.2
# OSErrors that describe the request, not the moment: repeating it cannot help
_DEFINITE = (FileExistsError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# stores whose single-object upload is atomic (no rename there: mv is a copy)
_OBJECT_STORES = {"gs", "gcs", "s3", "s3a", "memory"}


def is_transient(e: BaseException) -> bool:
    """An error a retry can cure: what fsspec raises for a dropped connection or a timeout
    (OSError, ConnectionError, TimeoutError), not one about the path or its permissions."""
    return isinstance(e, OSError) and not isinstance(e, _DEFINITE)


def retry_transient(what: str, attempt: Callable[[], T]) -> T:
    """attempt() until it succeeds, at most WRITE_ATTEMPTS times while it fails transiently,
    logging each retry in one line; then one OSError in one line naming `what`. `attempt`
    must leave nothing behind when it fails: it is simply called again."""
    t0, k = time.monotonic(), 1
    while True:
        try:
            return attempt()
        except Exception as e:
            if not is_transient(e):
                raise
            cause = f"{type(e).__name__}: {' '.join(str(e).split())}"
            if k == WRITE_ATTEMPTS:
                raise OSError(f"{what} failed {k} times in {time.monotonic() - t0:.1f} s (last: {cause}); "
                              "the storage is unreachable or refusing writes, nothing was written") from e
            wait = BACKOFF_S * 2 ** (k - 1) * random.uniform(0.8, 1.2)
            log.warning("storage: %s failed (attempt %d of %d, %s); retrying in %.2f s",
                        what, k, WRITE_ATTEMPTS, cause, wait)
            time.sleep(wait)
            k += 1


def _write_once(fs, path: str, data: bytes) -> None:
    """One attempt: the whole object under `path`, or (raising) nothing new anywhere."""
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & _OBJECT_STORES:
        fs.pipe_file(path, data)                 # one upload: the object appears complete or not at all
        return
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        try:
            if fs.exists(tmp):
                fs.rm(tmp)
        except OSError as e:                     # the store is failing: say what stays behind
            log.warning("storage: could not remove the partial %s (%s: %s)", tmp, type(e).__name__, e)
        raise


def write_bytes_atomic(url: str, data: bytes) -> str:
    fs, path = url_to_fs(url)
    retry_transient(f"writing {url}", lambda: _write_once(fs, path, data))
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
