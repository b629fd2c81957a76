"""Conversions between stored uint8 frames (channel-last, as PNG/MP4 give them) and the
tokenizer's float pixels (channel-first, in [-1, 1]), plus the PSNR on that range.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def images_to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) gray or (N, H, W, C) uint8 -> (N, C, H, W) float in [-1, 1]."""
    x = torch.as_tensor(np.array(images))          # a copy: inputs may be read-only buffers
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def clips_to_pixels(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, T, H, W) gray or (N, T, H, W, C) uint8 -> (N, C, T, H, W) float in [-1, 1]."""
    x = torch.as_tensor(np.array(clips))
    if x.ndim == 4:
        x = x.unsqueeze(-1)
    return x.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def pixels_to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(N, C, [T,] H, W) float in [-1, 1] -> channel-last uint8 ((N, [T,] H, W, C))."""
    x = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(1, -1).numpy()


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for pixels in [-1, 1]: the peak-to-peak range is 2, so peak^2 = 4
    (identical to the usual PSNR of the same images scaled to [0, 1])."""
    return 10.0 * math.log10(4.0 / max(mse, 1e-12))
