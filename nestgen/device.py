"""Device choice in one place: `auto` means CUDA when present, CPU otherwise."""
from __future__ import annotations

import contextlib

import torch

from nestgen.configschema import check


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available")
    return dev


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; fp32 (no autocast) otherwise."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_device(name: str, field: str = "device") -> None:
    """The one check of a config's device field (ConfigError names `field`)."""
    check(name in ("auto", "cpu", "cuda") or name.startswith("cuda:"), field,
          f"must be auto, cpu or cuda[:i], got {name!r}")
