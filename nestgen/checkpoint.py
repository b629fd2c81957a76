"""Checkpoints on any fsspec URL: model weights with the config that built them.

A checkpoint is one torch file holding {"config", "model", and optionally "optimizer",
"scheduler", "ema", "step", "extra"}. It is written to a temporary name and moved into
place, so a reader never sees a half-written file.
"""
from __future__ import annotations

import io
import uuid
from typing import Any

import fsspec
import torch

from nestgen.config import NestgenConfig, config_from_dict, config_to_dict
from nestgen.model.nested_transformer import NestedTransformer


def save_checkpoint(url: str, cfg: NestgenConfig, model: torch.nn.Module, **state: Any) -> str:
    payload = {"config": config_to_dict(cfg), "model": model.state_dict(), **state}
    buf = io.BytesIO()
    torch.save(payload, buf)
    fs, path = fsspec.core.url_to_fs(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as f:
        f.write(buf.getvalue())
    fs.mv(tmp, path)
    return url


def read_checkpoint(url: str, map_location: str | torch.device = "cpu") -> dict:
    with fsspec.open(url, "rb") as f:
        return torch.load(io.BytesIO(f.read()), map_location=map_location, weights_only=False)


def load_model(url: str, device: str | torch.device = "cpu", use_ema: bool = True
               ) -> tuple[NestedTransformer, NestgenConfig]:
    """The model (EMA weights when the checkpoint has them and use_ema) and its config."""
    ckpt = read_checkpoint(url)
    cfg = config_from_dict(ckpt["config"])
    model = NestedTransformer(cfg.model)
    state = ckpt.get("ema") if use_ema and ckpt.get("ema") else ckpt["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), cfg
