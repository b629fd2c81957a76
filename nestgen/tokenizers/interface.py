"""What nestgen needs from a tokenizer: the only surface its consumers use.

The tokenize step, training (shard manifests), evaluation and sample rendering, serving and
conditioning all take a `Tokenizer`; `nestgen.tokenizers.load_tokenizer` returns one for any
supported URL. Implementations: nestgen's own `VQTokenizer` (its checkpoints) and
`DiffusersVQTokenizer` (a Hugging Face diffusers `VQModel` folder).

Pixels follow nestgen's convention (nestgen.tokenizers.pixels): float, channel-first, in
[-1, 1], (B, C, H, W) for images and (B, C, T, H, W) for video. Ids are long tensors shaped
(B, *grid).
"""
from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch


@runtime_checkable
class Tokenizer(Protocol):
    kind: Literal["image", "video"]
    channels: int              # C of the pixels it takes (1 gray, 3 RGB)
    image_size: int            # H = W the tokenize step resizes inputs to
    frames: int                # T of a clip (1 for an image tokenizer)
    temporal_downsample: int   # pixel frames per latent frame (1 for an image tokenizer)
    causal: bool               # frame 0 is a latent frame of its own, then groups of
                               # temporal_downsample (tokenizers.config.pixel_frames)
    grid: list[int]            # token grid of one sample: [h, w] or [t, h, w]
    vocab_size: int            # codebook size: ids are in [0, vocab_size)

    @property
    def hash(self) -> str:
        """Content hash of everything that decides which ids map to which pixels (config and
        weights). Shard manifests and generator checkpoints record it; a tokenizer with
        another hash never decodes their tokens."""

    @property
    def device(self) -> torch.device: ...

    def encode(self, pixels: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Pixels -> ids (B, *grid) on the tokenizer's device, without gradients."""

    def decode(self, ids: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Ids (B, *grid) -> pixels clamped to [-1, 1], without gradients."""

    def describe(self) -> dict:
        """A JSON-able description (format and config) for manifests and model cards."""
