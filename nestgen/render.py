"""Token grids -> pictures: digits gray levels, or a VQ tokenizer's decoder.

Used for sample grids everywhere (demo, MLflow artifacts, evaluation, serving).
"""
from __future__ import annotations

import numpy as np
import torch

from nestgen.images import make_grid


def tokens_to_pixels(tokens: torch.Tensor, grid: list[int], tokenizer=None) -> np.ndarray:
    """(B, N) ids -> uint8 (B, H, W[, C]) images or (B, T, H, W, C) clips.

    Without a tokenizer the ids are the raw digits' gray levels (vocab 17, 8x8)."""
    if tokenizer is None:
        from nestgen.data.digits import digit_tokens_to_images
        return digit_tokens_to_images(tokens)
    from nestgen.tokenizers import pixels_to_uint8
    pixels = tokenizer.decode(tokens.reshape(-1, *grid).to(tokenizer.device))
    out = pixels_to_uint8(pixels)
    return out[..., 0] if out.shape[-1] == 1 else out


def sample_sheet(rows: list[np.ndarray], scale: int = 1) -> np.ndarray:
    """One picture from rows of samples (each (n, H, W[, C]) images or (n, T, H, W[, C])
    clips, a clip drawn as a strip of its frames): row i of the sheet is rows[i]."""
    flat = []
    for r in rows:
        if r.ndim >= 4 and (r.ndim == 5 or r.shape[-1] not in (1, 3)):     # clips: frames side by side
            r = np.concatenate(list(np.moveaxis(r, 1, 0)), axis=2)
        flat.append(r)
    n = max(len(r) for r in flat)
    return make_grid(np.concatenate(flat), nrow=n, scale=scale)
