"""scikit-learn's handwritten digits as a ready-made token grid, and their train/held-out split.

The raw digits are 8x8 images with 17 gray levels (0..16): already a token grid with
vocab 17, usable without a VQ tokenizer (docs/method.md, "Choices"). `digit_split` is the
one split of the digits: the token data, the image files and the moving-digits clips all
hold out the same digits for the same holdout_fraction and seed.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

DIGITS_VOCAB = 17
DIGITS_GRID = (8, 8)


@functools.lru_cache(maxsize=1)
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, 8, 8) float32 gray levels 0..16 and their labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = d.images.astype(np.float32), d.target.astype(np.int64)
    images.setflags(write=False)           # cached: callers must copy before editing
    labels.setflags(write=False)
    return images, labels


def digit_split(n: int, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_indices, holdout_indices) of n digits: a seeded permutation, the first
    round(n * holdout_fraction) held out."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_hold = int(round(n * holdout_fraction))
    return perm[n_hold:], perm[:n_hold]


def load_digit_tokens(holdout_fraction: float = 0.1, seed: int = 0
                      ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train_tokens, train_labels), (holdout_tokens, holdout_labels)); tokens (n, 64) long."""
    images, labels = raw_digits()
    tokens = torch.from_numpy(images.reshape(len(images), -1).astype(np.int64))
    labels = torch.from_numpy(labels.copy())
    train, hold = (torch.from_numpy(i) for i in digit_split(len(tokens), holdout_fraction, seed))
    return (tokens[train], labels[train]), (tokens[hold], labels[hold])


def digit_tokens_to_images(tokens: torch.Tensor) -> np.ndarray:
    """(B, 64) gray-level tokens -> (B, 8, 8) uint8 images (0..255)."""
    t = tokens.detach().cpu().clamp(0, DIGITS_VOCAB - 1).numpy().reshape(-1, *DIGITS_GRID)
    return (t * (255.0 / (DIGITS_VOCAB - 1))).round().astype(np.uint8)
