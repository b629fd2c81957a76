"""nestgen's own VQ tokenizer: pixels <-> a grid of token ids, for images (2D) and video (3D).
It implements nestgen.tokenizers.interface.Tokenizer.

    encode: (B, C, H, W) or (B, C, T, H, W) float in [-1, 1] -> (B, h, w) / (B, t, h, w) long
    decode: ids -> pixels in [-1, 1]

Both run on the module's device (inputs are moved there) and without gradients; `forward`
is the training path (reconstruction plus quantizer loss and statistics).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn

from nestgen.configschema import to_dict
from nestgen.tokenizers.blocks import Decoder, Encoder
from nestgen.tokenizers.config import TokenizerConfig
from nestgen.tokenizers.quantizer import VectorQuantizer


FORMAT = "nestgen-tokenizer/1"
HASH_CHARS = 16


# Config fields added after checkpoints existed, with the value that means the architecture
# those checkpoints have: at that value a field is left out of the hash, so their hash (stored
# in them and in the shard manifests made with them) stays what it was.
_HASHED_ONLY_WHEN_SET = {"causal": False}


def state_hash(cfg: TokenizerConfig, state: dict[str, torch.Tensor]) -> str:
    """sha256 over the canonical JSON of the config and every state tensor's name, dtype,
    shape and bytes; 16 hex chars."""
    config = {k: v for k, v in to_dict(cfg).items()
              if k not in _HASHED_ONLY_WHEN_SET or v != _HASHED_ONLY_WHEN_SET[k]}
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:HASH_CHARS]


@dataclass
class TokenizerOutput:
    recon: torch.Tensor        # pixels, same shape as the input (not clamped: the loss sees all)
    ids: torch.Tensor          # token grid
    q_loss: torch.Tensor       # codebook + commitment loss
    flat_inputs: torch.Tensor  # (N, code_dim) encoder outputs as the quantizer saw them


class VQTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        dims = 3 if cfg.kind == "video" else 2
        widths = cfg.stage_widths()
        args = (dims, cfg.channels, widths, cfg.num_res_blocks, cfg.temporal_stages, cfg.code_dim, cfg.causal)
        self.encoder = Encoder(*args)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.beta, cfg.l2_normalize)
        self.decoder = Decoder(*args)

    @property
    def device(self) -> torch.device:
        return self.quantizer.codebook.device

    # ---- the Tokenizer interface's description of what it takes and gives
    @property
    def kind(self) -> str:
        return self.cfg.kind

    @property
    def channels(self) -> int:
        return self.cfg.channels

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def frames(self) -> int:
        return self.cfg.frames if self.cfg.kind == "video" else 1

    @property
    def temporal_downsample(self) -> int:
        return self.cfg.temporal_downsample if self.cfg.kind == "video" else 1

    @property
    def causal(self) -> bool:
        return self.cfg.causal

    @property
    def grid(self) -> list[int]:
        return list(self.cfg.grid)

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    @property
    def hash(self) -> str:
        """Computed from the current weights (they change while training)."""
        return state_hash(self.cfg, self.state_dict())

    def describe(self) -> dict:
        return {"format": FORMAT, "config": to_dict(self.cfg)}

    def _check_pixels(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        ndim = 5 if cfg.kind == "video" else 4
        if x.ndim != ndim or x.shape[1] != cfg.channels:
            raise ValueError(f"{cfg.kind} tokenizer expects (B, {cfg.channels}, "
                             f"{'T, ' if ndim == 5 else ''}H, W) pixels, got {tuple(x.shape)}")
        # Fully convolutional: any size divisible by the downsampling factors works (a causal
        # tokenizer takes 1 + a multiple of temporal_downsample frames).
        if x.shape[-1] % cfg.downsample or x.shape[-2] % cfg.downsample or (
                ndim == 5 and (x.shape[2] - int(cfg.causal)) % cfg.temporal_downsample):
            raise ValueError(f"pixel shape {tuple(x.shape)} is not divisible by downsample="
                             f"{cfg.downsample} (temporal {cfg.temporal_downsample}"
                             f"{', causal: 1 + a multiple of it' if cfg.causal else ''})")

    def forward(self, pixels: torch.Tensor) -> TokenizerOutput:
        self._check_pixels(pixels)
        q = self.quantizer(self.encoder(pixels))
        return TokenizerOutput(self.decoder(q.quantized), q.ids, q.loss, q.flat_inputs)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Float pixels in [-1, 1] -> token ids on the module's device; `batch_size` bounds memory."""
        self._check_pixels(pixels)
        chunks = pixels.split(batch_size) if batch_size else (pixels,)
        return torch.cat([self.quantizer.quantize_ids(self.encoder(c.to(self.device, torch.float32)))
                          for c in chunks])

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Token ids -> float pixels clamped to [-1, 1]."""
        want = 4 if self.cfg.kind == "video" else 3
        if ids.ndim != want:
            raise ValueError(f"{self.cfg.kind} tokenizer decodes {want - 1}-d grids (B, *grid), "
                             f"got ids of shape {tuple(ids.shape)}")
        chunks = ids.split(batch_size) if batch_size else (ids,)
        return torch.cat([self.decoder(self.quantizer.embed(c.to(self.device).long())).clamp(-1, 1)
                          for c in chunks])

    def reconstruct(self, pixels: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        return self.decode(self.encode(pixels, batch_size), batch_size)
