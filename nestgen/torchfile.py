"""Torch files read from storage without running code from them.

A torch file is a pickle: unpickled freely, a checkpoint that anyone with write access to
a shared bucket can replace would run arbitrary code in every trainer, evaluator and
replica that loads it. Every checkpoint is read with `weights_only=True` (tensors,
numbers, strings and plain containers only); anything else is refused with
UnsafeCheckpointError before a single object is built.
"""
from __future__ import annotations

import io
import pickle

import torch

from nestgen.storage import read_bytes


class UnsafeCheckpointError(ValueError):
    """The file holds pickled objects other than tensors and plain containers."""


def load_torch_bytes(data: bytes, source: str, map_location: str | torch.device = "cpu"):
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
    """The torch file at `url` (any fsspec URL), loaded with weights_only=True."""
    return load_torch_bytes(read_bytes(url), url, map_location)
