"""Typed config of a VQ tokenizer (2D for images, 3D for video), loadable with
`nestgen.configschema.from_dict(TokenizerConfig, d)`.

Defaults train a small image tokenizer on the 32x32 digit PNGs on a laptop CPU. The
paper-scale settings are MAGVIT's: video 16x128x128 -> 4x16x16 tokens (downsample 8,
temporal_downsample 4), codebook 1024; images 256x256 -> 16x16 (downsample 16). With
`causal: true` (MAGVIT-v2) a clip has 1 + 4k frames and frame 0 is a latent frame of its own:
17x128x128 -> 5x16x16, so that 5 given frames are exactly 2 latent frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from nestgen.configschema import check
from nestgen.device import check_device


def _is_pow2(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def pixel_frames(latent_frames: int, temporal_downsample: int, causal: bool) -> int:
    """Pixel frames that the first `latent_frames` latent frames stand for: whole groups of
    `temporal_downsample`, or, for a causal tokenizer, frame 0 alone and then whole groups."""
    if causal and latent_frames > 0:
        return 1 + (latent_frames - 1) * temporal_downsample
    return latent_frames * temporal_downsample


@dataclass
class TokenizerConfig:
    kind: Literal["image", "video"] = "image"
    channels: int = 3                # 3 for RGB, 1 for gray (the moving digits clips)
    image_size: int = 32             # H = W of the pixels the tokenizer is built for
    frames: int = 16                 # T of a clip (video only)
    # --- architecture
    base_width: int = 32             # conv channels at full resolution, doubled per stage
    max_width: int = 256             # cap on the doubling
    num_res_blocks: int = 1          # residual blocks per resolution stage
    downsample: int = 4              # spatial factor, a power of two: log2 stages (4, 8, 16)
    temporal_downsample: int = 4     # video only; a power of two <= downsample
    # Causal in time (MAGVIT-v2): convolutions see only the past and norms one frame at a time,
    # so the latents of frames <= t do not depend on later frames and frame 0 is encoded alone.
    causal: bool = False             # video only; frames = 1 + temporal_downsample*k -> 1 + k latent frames
    # --- quantizer
    codebook_size: int = 256         # vocab size of the token grid
    code_dim: int = 32               # low-dim codes (ViT-VQGAN) keep the codebook in use
    l2_normalize: bool = True        # cosine-similarity lookup on the unit sphere
    beta: float = 0.25               # commitment weight
    dead_code_restart_every: int = 50   # steps; codes unused over that window are re-seeded
                                        # from encoder outputs (0 disables)
    # --- training
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_clip: float = 1.0           # 0 disables
    # --- optional adversarial loss (a patch discriminator, hinge loss; see discriminator.py)
    # Before adversarial_start the reconstructions are noise a discriminator would learn nothing from.
    adversarial_weight: float = 0.0  # tokenizer's adversarial term, next to the MSE (0.01 on the digits); 0 = off
    adversarial_start: int = 500     # MSE-only steps before the discriminator trains and its loss is added
    usage_window: int = 100          # steps over which codebook usage is reported
    log_every: int = 50
    seed: int = 0                    # pins init, batch order and dead-code restarts (part of its hash)
    device: str = "auto"             # auto | cpu | cuda[:i]

    # ---- derived shapes
    @property
    def spatial_stages(self) -> int:
        return int(math.log2(self.downsample))

    @property
    def temporal_stages(self) -> int:
        return int(math.log2(self.temporal_downsample)) if self.kind == "video" else 0

    @property
    def latent_frames(self) -> int:
        if self.causal:
            return 1 + (self.frames - 1) // self.temporal_downsample
        return self.frames // self.temporal_downsample

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def grid(self) -> list[int]:
        """Token grid: [h, w] for images, [t, h, w] for video (ModelConfig.grid's convention)."""
        hw = [self.latent_size, self.latent_size]
        return [self.latent_frames, *hw] if self.kind == "video" else hw

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    @property
    def pixel_shape(self) -> list[int]:
        """One sample's pixel tensor shape: [C, H, W] or [C, T, H, W]."""
        hw = [self.image_size, self.image_size]
        return [self.channels, self.frames, *hw] if self.kind == "video" else [self.channels, *hw]

    def stage_widths(self) -> list[int]:
        """Conv widths at each resolution, full resolution first (spatial_stages + 1 entries)."""
        return [min(self.base_width * 2 ** i, self.max_width) for i in range(self.spatial_stages + 1)]

    def validate(self) -> None:
        check(self.channels >= 1, "channels", f"must be >= 1, got {self.channels}")
        check(_is_pow2(self.downsample) and self.downsample >= 2, "downsample",
              f"must be a power of two >= 2 (e.g. 4, 8, 16), got {self.downsample}")
        check(self.image_size >= 1 and self.image_size % self.downsample == 0, "image_size",
              f"must be a multiple of downsample={self.downsample}, got {self.image_size}")
        if self.kind == "video":
            check(_is_pow2(self.temporal_downsample), "temporal_downsample",
                  f"must be a power of two, got {self.temporal_downsample}")
            check(self.temporal_downsample <= self.downsample, "temporal_downsample",
                  f"must be <= downsample={self.downsample} (time is reduced inside the spatial "
                  f"stages), got {self.temporal_downsample}")
            if self.causal:
                check(self.frames >= 1 and (self.frames - 1) % self.temporal_downsample == 0, "frames",
                      f"must be 1 + a multiple of temporal_downsample={self.temporal_downsample} "
                      f"(causal: frame 0 alone, then groups), got {self.frames}")
            else:
                check(self.frames >= 1 and self.frames % self.temporal_downsample == 0, "frames",
                      f"must be a multiple of temporal_downsample={self.temporal_downsample}, "
                      f"got {self.frames}")
        else:
            check(not self.causal, "causal", "applies to video tokenizers only (kind: video)")
        check(self.base_width >= 1, "base_width", f"must be >= 1, got {self.base_width}")
        check(self.max_width >= self.base_width, "max_width", "must be >= base_width")
        check(self.num_res_blocks >= 0, "num_res_blocks", "must be >= 0")
        check(self.codebook_size >= 2, "codebook_size", f"must be >= 2, got {self.codebook_size}")
        check(self.code_dim >= 1, "code_dim", f"must be >= 1, got {self.code_dim}")
        check(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        check(self.dead_code_restart_every >= 0, "dead_code_restart_every", "must be >= 0 (0 disables)")
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables)")
        check(self.adversarial_weight >= 0, "adversarial_weight", "must be >= 0 (0 disables)")
        check(self.adversarial_start >= 0, "adversarial_start", "must be >= 0")
        check(self.usage_window >= 1, "usage_window", "must be >= 1")
        check(self.log_every >= 1, "log_every", "must be >= 1")
        check_device(self.device)
