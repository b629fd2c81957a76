"""scikit-learn's handwritten digits as a ready-made token grid.

The raw digits are 8x8 images with 17 gray levels (0..16): already a token grid with
vocab 17, usable without a VQ tokenizer (docs/method.md, "Choices").
"""
from __future__ import annotations

import numpy as np
import torch

DIGITS_VOCAB = 17
DIGITS_GRID = (8, 8)


def load_digit_tokens(holdout_fraction: float = 0.1, seed: int = 0
                      ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train_tokens, train_labels), (holdout_tokens, holdout_labels)); tokens (n, 64) long."""
    from sklearn.datasets import load_digits

    d = load_digits()
    tokens = torch.from_numpy(d.images.reshape(len(d.images), -1).astype(np.int64))
    labels = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed))
    n_hold = int(round(len(tokens) * holdout_fraction))
    hold, train = perm[:n_hold], perm[n_hold:]
    return (tokens[train], labels[train]), (tokens[hold], labels[hold])


def digit_tokens_to_images(tokens: torch.Tensor) -> np.ndarray:
    """(B, 64) gray-level tokens -> (B, 8, 8) uint8 images (0..255)."""
    t = tokens.detach().cpu().clamp(0, DIGITS_VOCAB - 1).numpy().reshape(-1, *DIGITS_GRID)
    return (t * (255.0 / (DIGITS_VOCAB - 1))).round().astype(np.uint8)
