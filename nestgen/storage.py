"""Storage on any fsspec URL (local path, file://, gs://, memory://, ...).

Writes are atomic from a reader's point of view: an object store (gs://, s3://, memory://)
gets the bytes as one object upload, which is visible whole or not at all; any other
filesystem gets them under a temporary name in the same folder, moved into place, so no
reader ever sees a half-written file. A write that fails transiently (a dropped connection,
a timeout) is retried a bounded number of times (`retry_transient`, the one retry policy
of nestgen's storage writes); a failed attempt leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import random
import re
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


LATEST = "LATEST"
PUBLISHED = "published"
# step<8 digits>-<first 12 hex of the bytes' sha256>.pt: the name pins the content
PUBLISHED_NAME = re.compile(r"step(?P<step>\d{8})-(?P<sha>[0-9a-f]{12})\.pt")


class UntrustedCheckpointError(ValueError):
    """A published checkpoint whose bytes are not the ones its name pins, or a LATEST that
    names something other than a checkpoint in its own folder's published/."""


def _published_match(url: str) -> re.Match | None:
    """The name's match when `url` is a file in a published/ folder with a published name."""
    parent, name = posixpath.split(url_to_fs(url)[1])
    return PUBLISHED_NAME.fullmatch(name) if posixpath.basename(parent) == PUBLISHED else None


def read_verified(url: str) -> bytes:
    """The bytes at `url`; for a published checkpoint, only when they hash to what its name
    says (a published file never changes: other bytes were put there by someone else)."""
    data = read_bytes(url)
    m = _published_match(url)
    if m is not None:
        actual = hashlib.sha256(data).hexdigest()[:len(m["sha"])]
        if actual != m["sha"]:
            raise UntrustedCheckpointError(
                f"refusing {url}: its bytes hash to sha256 {actual}..., not the {m['sha']}... its published name "
                "pins; the file was replaced or damaged since it was published. Restore it, or publish the run's "
                "checkpoint again")
    return data


def _own_published(folder: str, named: str) -> str | None:
    """The published file name when `named` (a LATEST's content) is a checkpoint in
    folder's own published/: `published/<name>`, or (as older runs wrote it) the full URL of
    one; None for anything else."""
    if "://" not in named and not named.startswith("/"):
        head, _, name = named.partition("/")
        if head == PUBLISHED and PUBLISHED_NAME.fullmatch(name):
            return name
    own_fs, own = url_to_fs(join(folder, PUBLISHED))
    try:
        fs, path = url_to_fs(named)
    except (ValueError, ImportError):             # a protocol fsspec does not know
        return None
    parent, name = posixpath.split(posixpath.normpath(path))
    same_place = fs.protocol == own_fs.protocol and parent == posixpath.normpath(own)
    return name if same_place and PUBLISHED_NAME.fullmatch(name) else None


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
        named = read_bytes(pointer).decode().strip()
        # whoever can write LATEST must not be able to point readers anywhere else
        name = _own_published(url, named)
        if name is None:
            raise UntrustedCheckpointError(
                f"refusing {pointer}: it names {named[:200]!r}, which is not a checkpoint in {join(url, PUBLISHED)}/ "
                f"(a {LATEST} may only name its own folder's published checkpoints); run the training again "
                "or give the checkpoint's URL")
        return join(url, PUBLISHED, name)
    return url


def write_latest(output_url: str, checkpoint_url: str) -> None:
    """Point output_url's LATEST at checkpoint_url, a checkpoint in output_url's published/,
    by its name relative to the folder."""
    name = _own_published(output_url, checkpoint_url)
    if name is None:
        raise ValueError(f"{checkpoint_url} is not a checkpoint in {join(output_url, PUBLISHED)}/: "
                         f"a {LATEST} names only its own folder's published checkpoints (publish_checkpoint)")
    write_bytes_atomic(join(output_url, LATEST), f"{PUBLISHED}/{name}".encode())


def publish_checkpoint(output_url: str, checkpoint_url: str, step: int) -> str:
    """An immutable copy of a checkpoint: <output_url>/published/step<step>-<sha256[:12]>.pt.

    What LATEST, an MLflow run's checkpoint_uri or a registered model version names must
    outlive the trainer's own folder, whose rotation (num_to_keep) and resumed runs delete
    and rewrite checkpoints. Nothing deletes or rewrites published/: the name carries the
    content hash (checked by every read, read_verified), so publishing the same checkpoint
    again is a no-op and another one never takes its name."""
    data = read_verified(checkpoint_url)
    url = join(output_url, PUBLISHED, f"step{step:08d}-{hashlib.sha256(data).hexdigest()[:12]}.pt")
    if not exists(url):
        write_bytes_atomic(url, data)
    return url


def republish(output_url: str, checkpoint_url: str) -> str:
    """checkpoint_url published in output_url's own published/ too, so that folder's LATEST
    can name it: a published checkpoint keeps its name (step and hash), another file is
    published as step 0."""
    m = _published_match(checkpoint_url)
    return publish_checkpoint(output_url, checkpoint_url, int(m["step"]) if m else 0)
