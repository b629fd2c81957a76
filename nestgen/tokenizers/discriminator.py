"""The patch discriminator of the tokenizer's optional adversarial loss (VQGAN's recipe).

MSE alone makes a VQ autoencoder average over what a code cannot pin down: blurry
reconstructions. A PatchGAN discriminator (Isola et al. 2017) scores overlapping patches as
real or reconstructed, and the tokenizer is pushed towards patches that look real. It only
exists while training: tokenizer checkpoints hold the tokenizer alone (the trainer state
keeps the discriminator for resuming).

Hinge losses (as in VQGAN / ViT-VQGAN):
    discriminator  mean(relu(1 - D(real))) + mean(relu(1 + D(recon)))
    tokenizer      -mean(D(recon)), weighted by tokenizer.adversarial_weight
Video clips are judged frame by frame (time folded into the batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nestgen.tokenizers.config import TokenizerConfig


def _groups(ch: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)


class PatchDiscriminator(nn.Module):
    """Strided 4x4 convs (2 for images under 64 pixels, else 3), widths from the tokenizer's
    base_width doubling up to max_width, GroupNorm (batch statistics would differ across
    ranks and between real and fake halves), one logit per patch."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        n = 3 if cfg.image_size >= 64 else 2
        widths = [min(cfg.base_width * 2 ** i, cfg.max_width) for i in range(n)]
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1), nn.GroupNorm(_groups(b), b), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim == 5:                              # (B, C, T, H, W) -> frames
            pixels = pixels.transpose(1, 2).flatten(0, 1)
        return self.net(pixels)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
