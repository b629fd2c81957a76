"""nestgen's own tokenizer checkpoints on any fsspec URL.

The checkpoint stores the tokenizer's content hash (VQTokenizer.hash: config and every
weight tensor) and loading checks it, which also catches a corrupted file. Token shards and
generator checkpoints record that hash, so tokens are never decoded with a different
tokenizer than the one that made them.

Writing it whole, reading it as data only and a folder's LATEST are
nestgen.checkpoint_files'.
"""
from __future__ import annotations

from typing import Any

import torch

from nestgen.checkpoint_files import checkpoint_file, read_torch, write_torch
from nestgen.configschema import from_dict, to_dict
from nestgen.tokenizers.config import TokenizerConfig
from nestgen.tokenizers.model import FORMAT, VQTokenizer, state_hash


def save_tokenizer(url: str, model: VQTokenizer, **extra: Any) -> str:
    """Write {format, config, model, hash, **extra} (e.g. trainer state, history) to `url`."""
    core = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in core.state_dict().items()}
    payload = {"format": FORMAT, "config": to_dict(core.cfg), "model": state,
               "hash": state_hash(core.cfg, state), **extra}
    return write_torch(url, payload)


def read_tokenizer_checkpoint(url: str) -> dict:
    """`url`: a tokenizer checkpoint file, or a training output folder (its LATEST)."""
    url = checkpoint_file(url)
    ckpt = read_torch(url)
    if ckpt.get("format") != FORMAT:
        raise ValueError(f"{url} is not a tokenizer checkpoint (format {ckpt.get('format')!r})")
    return ckpt


def load_vq_tokenizer(url: str, device: str | torch.device = "cpu", expected_hash: str | None = None
                      ) -> VQTokenizer:
    """The tokenizer in eval mode on `device`; raises if its weights don't match the stored
    hash, or `expected_hash` (what a shard manifest or generator checkpoint recorded): a file
    replaced on storage since then would turn token ids into other pixels."""
    ckpt = read_tokenizer_checkpoint(url)
    cfg = from_dict(TokenizerConfig, ckpt["config"])
    model = VQTokenizer(cfg)
    model.load_state_dict(ckpt["model"])
    got = model.hash
    if got != ckpt["hash"]:
        raise ValueError(f"{url}: content hash {got} != stored {ckpt['hash']} (corrupt or edited)")
    if expected_hash and got != expected_hash:
        raise ValueError(f"{url}: tokenizer hash {got}, but {expected_hash} was recorded for it "
                         "(the file was replaced since)")
    return model.to(device).eval()
