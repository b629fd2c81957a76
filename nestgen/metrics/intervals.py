"""Paired bootstrap intervals over samples.

Two decode variants scored on the same requests (labels and seeds) are paired sample by
sample, so their difference is resampled jointly: every bootstrap replicate draws one set
of sample indices and applies it to both. Set metrics such as Fréchet distances are
recomputed on each replicate, so the statistic is a function of the indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Interval", "paired_bootstrap"]


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


def paired_bootstrap(stat: Callable[[np.ndarray], float], n: int, replicates: int = 1000,
                     level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile interval of `stat(indices)` over `replicates` draws of n indices with
    replacement (the same indices for every variant inside `stat`)."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to bootstrap, got {n}")
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(replicates)])
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return Interval(float(stat(np.arange(n))), float(lo), float(hi), level, replicates)
