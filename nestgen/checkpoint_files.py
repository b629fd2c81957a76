"""Checkpoint files on any fsspec URL: written whole, read as data, published, pointed at.

Every checkpoint nestgen writes or reads goes through here (the generator's payload is
nestgen.checkpoint's, the tokenizer's nestgen.tokenizers.checkpoint's):

    write_torch(url, payload)                # serialized in memory, written whole (storage.write_bytes_atomic)
    read_torch(url)                          # loaded as data only; a published file only with its pinned bytes
    publish_checkpoint(out, url, step)       # -> out/published/step<8 digits>-<sha256[:12]>.pt, never rewritten
    write_latest(out, published_url)         # out/LATEST names it: `published/<name>`
    checkpoint_file(url_or_folder)           # a file as given; a folder -> the published file its LATEST names

Read as data: a torch file is a pickle, and unpickled freely a checkpoint that anyone with
write access to a shared bucket can replace would run arbitrary code in every trainer,
evaluator and replica that loads it. Every checkpoint is read with `weights_only=True`
(tensors, numbers, strings and plain containers only); anything else is refused with
UnsafeCheckpointError before a single object is built. That guarantee only holds from
torch 2.6: before it, weights_only=True can be bypassed (CVE-2025-32434), so an older torch
is refused too.

Published: what a LATEST, an MLflow run's checkpoint_uri or a registered model version names
must outlive the trainer's own folder, whose rotation and resumed runs delete and rewrite
checkpoints. A published file's name carries its content hash, checked on every read
(read_verified), and a LATEST may only name its own folder's published files: whoever can
write either cannot make readers load other bytes.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import posixpath
import re
from typing import Callable

import torch

from nestgen.storage import exists, join, read_bytes, url_to_fs, write_bytes_atomic


def write_torch(url: str, payload: dict) -> str:
    """`payload` as one torch file at `url`, serialized in memory and written whole: a
    reader never sees a half-written file, and a write broken by a transient storage fault
    is written again (bounded, storage.retry_transient)."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    return write_bytes_atomic(url, buf.getvalue())


class UnsafeCheckpointError(ValueError):
    """The file holds pickled objects other than tensors and plain containers."""


# The first torch whose weights_only=True unpickler holds (CVE-2025-32434 was fixed in 2.6.0).
MIN_TORCH = (2, 6)


def check_torch_version() -> None:
    """UnsafeCheckpointError when the installed torch cannot load untrusted files safely."""
    m = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    if m is None or (int(m[1]), int(m[2])) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise UnsafeCheckpointError(
            f"refusing to load checkpoints with torch {torch.__version__}: before torch {need} "
            f"weights_only=True can be bypassed to run code (CVE-2025-32434); pip install 'torch>={need}'")


def load_torch_bytes(data: bytes, source: str, map_location: str | torch.device = "cpu"):
    check_torch_version()
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message names the offending global; the first line is enough to act on.
        detail = str(e).strip().splitlines()
        raise UnsafeCheckpointError(
            f"refusing to load {source}: it holds pickled objects other than tensors and plain "
            f"containers, which could run code when loaded ({detail[-1] if detail else 'unpickling refused'})"
        ) from None


def read_torch(url: str, map_location: str | torch.device = "cpu"):
    """The torch file at `url` (any fsspec URL), loaded with weights_only=True; a published
    checkpoint only with the bytes its name pins."""
    return load_torch_bytes(read_verified(url), url, map_location)


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


def checkpoint_file(url: str, resolve_uri: Callable[[str], str] | None = None) -> str:
    """The checkpoint file `url` names: a file URL as given; for an output folder, the
    published file its LATEST names. `resolve_uri` first maps names storage does not know to
    a URL: the orchestration layer passes one for its tracking server's runs:/<id> and
    models:/<name>/<version> (pipelines.model_registry.checkpoint_resolver)."""
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
