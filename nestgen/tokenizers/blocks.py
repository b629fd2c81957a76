"""Convolutional encoder and decoder, one implementation for 2D (images) and 3D (video).

`dims` picks Conv2d or Conv3d. Each resolution stage halves H and W (and T while temporal
stages remain, the first ones, so that the costly full-frame-rate activations are few).
GroupNorm normalizes per sample, so a batch gives the same result as its samples one by
one (BatchNorm would not), and nothing differs between train and eval mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(dims: int, cin: int, cout: int, kernel, stride=1, padding=0) -> nn.Module:
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(cin, cout, kernel, stride, padding)


def _norm(ch: int) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and ch // g >= 4 or g == 1)
    return nn.GroupNorm(groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    """norm-SiLU-conv3 twice plus a (1x1 projected when widths differ) skip."""

    def __init__(self, dims: int, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), _conv(dims, cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), _conv(dims, cout, cout, 3, padding=1)
        self.skip = _conv(dims, cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _stride(dims: int, temporal: bool) -> tuple[int, ...]:
    return (2, 2) if dims == 2 else ((2 if temporal else 1), 2, 2)


class Downsample(nn.Module):
    """Strided conv: kernel 4 / stride 2 / pad 1 halves a dim exactly; kernel 3 / stride 1 keeps it."""

    def __init__(self, dims: int, cin: int, cout: int, temporal: bool):
        super().__init__()
        s = _stride(dims, temporal)
        self.conv = _conv(dims, cin, cout, tuple(4 if si == 2 else 3 for si in s), s, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling then conv3: avoids the checkerboard of transposed convs."""

    def __init__(self, dims: int, cin: int, cout: int, temporal: bool):
        super().__init__()
        self.scale = tuple(float(s) for s in _stride(dims, temporal))
        self.conv = _conv(dims, cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class Encoder(nn.Module):
    """(B, C, [T,] H, W) -> (B, code_dim, [t,] h, w)."""

    def __init__(self, dims: int, channels: int, widths: list[int], num_res_blocks: int,
                 temporal_stages: int, code_dim: int):
        super().__init__()
        layers: list[nn.Module] = [_conv(dims, channels, widths[0], 3, padding=1)]
        for i in range(len(widths) - 1):
            layers += [ResBlock(dims, widths[i], widths[i]) for _ in range(num_res_blocks)]
            layers.append(Downsample(dims, widths[i], widths[i + 1], temporal=i < temporal_stages))
        layers += [ResBlock(dims, widths[-1], widths[-1]) for _ in range(max(1, num_res_blocks))]
        layers += [_norm(widths[-1]), nn.SiLU(), _conv(dims, widths[-1], code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, code_dim, [t,] h, w) -> (B, C, [T,] H, W); the mirror image of the Encoder."""

    def __init__(self, dims: int, channels: int, widths: list[int], num_res_blocks: int,
                 temporal_stages: int, code_dim: int):
        super().__init__()
        layers: list[nn.Module] = [_conv(dims, code_dim, widths[-1], 3, padding=1)]
        layers += [ResBlock(dims, widths[-1], widths[-1]) for _ in range(max(1, num_res_blocks))]
        for i in reversed(range(len(widths) - 1)):
            layers.append(Upsample(dims, widths[i + 1], widths[i], temporal=i < temporal_stages))
            layers += [ResBlock(dims, widths[i], widths[i]) for _ in range(num_res_blocks)]
        layers += [_norm(widths[0]), nn.SiLU(), _conv(dims, widths[0], channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
