"""Torch files read from storage without running code from them.

A torch file is a pickle: unpickled freely, a checkpoint that anyone with write access to
a shared bucket can replace would run arbitrary code in every trainer, evaluator and
replica that loads it. Every checkpoint is read with `weights_only=True` (tensors,
numbers, strings and plain containers only); anything else is refused with
UnsafeCheckpointError before a single object is built. That guarantee only holds from
torch 2.6: before it, weights_only=True can be bypassed (CVE-2025-32434), so an older torch
is refused too. A published checkpoint is also checked against the hash in its name
(nestgen.storage.read_verified).
"""
from __future__ import annotations

import io
import pickle
import re

import torch

from nestgen.storage import read_verified


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
