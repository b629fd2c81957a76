"""The generator's checkpoint: model weights with the config that built them, and the model
built from it.

A checkpoint is one torch file holding {"config", "model", and optionally "optimizer",
"scheduler", "ema", "step", "extra"}. Writing it whole, reading it as data only, a folder's
LATEST and published copies are nestgen.checkpoint_files'.
"""
from __future__ import annotations

from typing import Any

import torch

from nestgen.checkpoint_files import checkpoint_file, read_torch, write_torch
from nestgen.config import NestgenConfig, config_from_dict, config_to_dict, library_sections
from nestgen.model.nested_transformer import NestedTransformer


def save_checkpoint(url: str, cfg: NestgenConfig, model: torch.nn.Module | dict, **state: Any) -> str:
    """`model`: the model or its state_dict (a sharded trainer's gathered model_state())."""
    payload = {"config": config_to_dict(cfg), "model": model if isinstance(model, dict) else model.state_dict(),
               **state}
    return write_torch(url, payload)


def read_checkpoint(url: str, map_location: str | torch.device = "cpu") -> dict:
    """`url`: a checkpoint file, or a training output folder (its LATEST checkpoint).
    Refuses (UnsafeCheckpointError) a file holding anything but tensors and plain data."""
    return read_torch(checkpoint_file(url), map_location)


def model_from_checkpoint(ckpt: dict, device: str | torch.device = "cpu", use_ema: bool = True
                          ) -> tuple[NestedTransformer, NestgenConfig]:
    """The model (EMA weights when the checkpoint has them and use_ema) and the library part
    of its config (a pipeline run also saves its orchestration sections)."""
    cfg = config_from_dict(library_sections(ckpt["config"]))
    model = NestedTransformer(cfg.model)
    state = ckpt.get("ema") if use_ema and ckpt.get("ema") else ckpt["model"]
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def load_model(url: str, device: str | torch.device = "cpu", use_ema: bool = True
               ) -> tuple[NestedTransformer, NestgenConfig]:
    return model_from_checkpoint(read_checkpoint(url), device, use_ema)


def load_generator(url: str, device: str | torch.device = "cpu", use_ema: bool = True):
    """(model, config, tokenizer or None): a generator checkpoint with the tokenizer that made
    its training tokens (checked by hash), ready to decode samples to pixels."""
    ckpt = read_checkpoint(url)
    model, cfg = model_from_checkpoint(ckpt, device, use_ema)
    tok = None
    if cfg.data.source == "shards":
        from nestgen.data.shards import shard_tokenizer
        tok = shard_tokenizer(cfg.data.url, ckpt.get("tokenizer_hash"), device)
    return model, cfg, tok
