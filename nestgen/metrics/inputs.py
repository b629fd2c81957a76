"""Turning user image/video batches into the exact tensors the feature networks expect.

Layouts are resolved once, here, so every metric agrees on them: images as uint8 NCHW RGB,
videos as uint8 (B, C, T, H, W) RGB. Grayscale is repeated to 3 channels (as StyleGAN2-ADA
and StyleGAN-V do). Only uint8 is accepted for the standard metrics: a float array could be
in [0, 1], [-1, 1] or [0, 255], and guessing wrong changes FID silently.

Data may be one array or an iterable of batches (e.g. a generator that samples on the fly),
so features never need to be all in memory.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

__all__ = ["as_uint8_tensor", "images_to_nchw3", "videos_to_bcthw3", "iter_batches"]

def as_uint8_tensor(x) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels in 0..255, got {t.dtype}; convert explicitly "
                        "(e.g. (x * 255).round().clip(0, 255).astype(uint8) for [0, 1] floats)")
    return t


def images_to_nchw3(x, layout: str = "auto") -> torch.Tensor:
    """(N,H,W) | (N,H,W,C) | (N,C,H,W) uint8 -> (N,3,H,W) uint8. C in {1, 3}.

    layout: auto | NHW | NHWC | NCHW. auto treats a 4-d array as NCHW when dim 1 is 1 or 3
    and the last dim is not, else NHWC; pass the layout explicitly for tiny images where
    both readings fit (e.g. (N, 3, 3, 3)).
    """
    t = as_uint8_tensor(x)
    if layout == "auto":
        if t.ndim == 3:
            layout = "NHW"
        elif t.ndim == 4:
            layout = "NCHW" if t.shape[1] in (1, 3) and t.shape[-1] not in (1, 3) else "NHWC"
        else:
            raise ValueError(f"images must be (N,H,W), (N,H,W,C) or (N,C,H,W), got {tuple(t.shape)}")
    if layout == "NHW":
        t = t.unsqueeze(1)
    elif layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
    elif layout != "NCHW":
        raise ValueError(f"unknown image layout {layout!r}")
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"images need 1 or 3 channels in layout {layout}, got shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t.contiguous()


def videos_to_bcthw3(x, layout: str = "auto") -> torch.Tensor:
    """(B,T,H,W) | (B,T,H,W,C) | (B,C,T,H,W) uint8 -> (B,3,T,H,W) uint8. C in {1, 3}.

    layout: auto | BTHW | BTHWC | BCTHW. auto: 4-d is grayscale BTHW; 5-d is BTHWC when the
    last dim is 1 or 3, else BCTHW.
    """
    t = as_uint8_tensor(x)
    if layout == "auto":
        if t.ndim == 4:
            layout = "BTHW"
        elif t.ndim == 5:
            layout = "BTHWC" if t.shape[-1] in (1, 3) else "BCTHW"
        else:
            raise ValueError(f"videos must be (B,T,H,W), (B,T,H,W,C) or (B,C,T,H,W), got {tuple(t.shape)}")
    if layout == "BTHW":
        t = t.unsqueeze(1)
    elif layout == "BTHWC":
        t = t.permute(0, 4, 1, 2, 3)
    elif layout != "BCTHW":
        raise ValueError(f"unknown video layout {layout!r}")
    if t.ndim != 5 or t.shape[1] not in (1, 3):
        raise ValueError(f"videos need 1 or 3 channels in layout {layout}, got shape {tuple(t.shape)}")
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1, -1)
    return t.contiguous()


def iter_batches(data, batch_size: int) -> Iterator:
    """Slices of an array/tensor, or the items of an iterable of batches as they come."""
    if isinstance(data, (np.ndarray, torch.Tensor)):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
    else:
        for batch in data:
            # a producer's batch may be larger than what fits the feature net at once
            yield from iter_batches(batch, batch_size) if len(batch) > batch_size else [batch]
