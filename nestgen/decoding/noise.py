"""Counter-based random numbers for decoding: uniform(seed, step, position, stream).

Each sample's noise is a pure function of its own seed and the grid position, so a sample
is the same alone or in any batch, on CPU or GPU, and a whole batch draws its noise in a
few vectorized integer ops instead of one generator call per row (which dominated the
per-step overhead on GPU). The mixer is the "lowbias32" integer hash, with multipliers
below 2^31 so that int64 products never overflow.
"""
from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    return x ^ (x >> 16)


def uniform(seeds: torch.Tensor, step: int, positions: torch.Tensor, stream: int) -> torch.Tensor:
    """Floats strictly in (0, 1) (24-bit grid, exact in float32), shape of `positions` (B, n)."""
    h = _mix32(seeds.long()[:, None] & _M32)
    h = _mix32(h ^ ((step * 0x9E3779B1 + stream * 0x632BE5AB) & _M32))
    h = _mix32(h ^ positions.long())
    return ((h >> 8).float() + 0.5) / 2.0 ** 24


def gumbel(seeds: torch.Tensor, step: int, positions: torch.Tensor, stream: int) -> torch.Tensor:
    return -torch.log(-torch.log(uniform(seeds, step, positions, stream)))
