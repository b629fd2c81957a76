"""Paired bootstrap intervals over samples, or over chunks of samples.

Two decode variants scored on the same requests (labels and seeds) are paired sample by
sample, so their difference is resampled jointly: every bootstrap replicate draws one set
of sample indices and applies it to both. Set metrics such as Fréchet distances are
recomputed on each replicate, so the statistic is a function of the indices.

A streamed evaluation keeps summed statistics per chunk of samples, not samples
(nestgen.metrics.sums); there the replicate draws chunks: `resample_counts` gives how often
each chunk is drawn in each replicate, the same counts for every variant, and a variant's
replicate values are its metric on the weighted chunk sums. `paired_change` then turns the
replicate values of a variant and of the baseline into an interval of the relative change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Interval", "paired_bootstrap", "resample_counts", "percentile_interval", "paired_change"]


@dataclass(frozen=True)
class Interval:
    value: float         # the statistic on all samples
    lo: float
    hi: float
    level: float
    replicates: int

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "level": self.level,
                "replicates": self.replicates}


def percentile_interval(value: float, replicate_values: np.ndarray, level: float = 0.95) -> Interval:
    """The percentile interval of bootstrap replicate values around the full-sample value."""
    values = np.asarray(replicate_values, dtype=np.float64)
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return Interval(float(value), float(lo), float(hi), level, int(len(values)))


def paired_bootstrap(stat: Callable[[np.ndarray], float], n: int, replicates: int = 1000,
                     level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile interval of `stat(indices)` over `replicates` draws of n indices with
    replacement (the same indices for every variant inside `stat`)."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to bootstrap, got {n}")
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(replicates)])
    return percentile_interval(float(stat(np.arange(n))), values, level)


def resample_counts(chunks: int, replicates: int, seed: int = 0) -> np.ndarray:
    """(replicates, chunks): how often each chunk is drawn when `chunks` chunks are drawn
    with replacement; deterministic in the seed, so every variant gets the same draws."""
    if chunks < 2:
        raise ValueError(f"need at least 2 chunks to bootstrap, got {chunks}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, chunks, (replicates, chunks))
    return np.stack([np.bincount(d, minlength=chunks) for d in draws]) if replicates else np.zeros((0, chunks))


def paired_change(value: float, base: float, replicates: np.ndarray, base_replicates: np.ndarray,
                  level: float = 0.95) -> Interval:
    """Relative change (value - base) / |base| and its interval from paired replicate values
    (replicate r of both computed on the same draw)."""
    r, b = np.asarray(replicates, np.float64), np.asarray(base_replicates, np.float64)
    if r.shape != b.shape:
        raise ValueError(f"replicates are not paired: {r.shape} vs {b.shape}")
    return percentile_interval((value - base) / abs(base), (r - b) / np.abs(b), level)
