"""Convolutional encoder and decoder, one implementation for 2D (images) and 3D (video).

`dims` picks Conv2d or Conv3d. Each resolution stage halves H and W (and T while temporal
stages remain, the first ones, so that the costly full-frame-rate activations are few).
GroupNorm normalizes per sample, so a batch gives the same result as its samples one by
one (BatchNorm would not), and nothing differs between train and eval mode.

`causal` (video only, MAGVIT-v2): every conv pads time only on the past side, so output frame
t sees input frames <= t; GroupNorm takes its statistics per frame (over the whole clip it
would let later frames into earlier ones); a temporal stage maps 1 + 2m frames to 1 + m
(frame 0 alone, then pairs) and its upsampling back (each frame doubled, the first copy of
frame 0 dropped). Latents of frames <= t therefore depend only on frames <= t, latent 0 on
frame 0 alone, and decoded frames <= t only on the latents of those frames. The causal
modules are subclasses of the plain ones, so both variants have the same parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv3d(nn.Conv3d):
    """Conv3d zero-padded by kernel_t - 1 frames in the past and none in the future: with
    stride s in time, T frames give 1 + (T - 1) // s, and output frame j ends at input j * s."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding: int = 0):
        kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
        super().__init__(cin, cout, kernel, stride, (0, padding, padding))
        self.time_pad = kernel[0] - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (0, 0, 0, 0, self.time_pad, 0)))


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame of (B, C, T, H, W): time folded into the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        y = super().forward(x.transpose(1, 2).flatten(0, 1))
        return y.unflatten(0, (b, t)).transpose(1, 2)


def _conv(dims: int, cin: int, cout: int, kernel, stride=1, padding=0, causal: bool = False) -> nn.Module:
    if causal:
        return CausalConv3d(cin, cout, kernel, stride, padding)
    return (nn.Conv2d if dims == 2 else nn.Conv3d)(cin, cout, kernel, stride, padding)


def _norm(ch: int, causal: bool = False) -> nn.GroupNorm:
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and ch // g >= 4 or g == 1)
    return (FrameGroupNorm if causal else nn.GroupNorm)(groups, ch, eps=1e-6)


class ResBlock(nn.Module):
    """norm-SiLU-conv3 twice plus a (1x1 projected when widths differ) skip."""

    def __init__(self, dims: int, cin: int, cout: int, causal: bool = False):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, causal), _conv(dims, cin, cout, 3, padding=1, causal=causal)
        self.norm2, self.conv2 = _norm(cout, causal), _conv(dims, cout, cout, 3, padding=1, causal=causal)
        self.skip = _conv(dims, cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _stride(dims: int, temporal: bool) -> tuple[int, ...]:
    return (2, 2) if dims == 2 else ((2 if temporal else 1), 2, 2)


class Downsample(nn.Module):
    """Strided conv: kernel 4 / stride 2 / pad 1 halves a dim exactly; kernel 3 / stride 1 keeps it.
    Causal, time is padded kernel - 1 in the past instead: 1 + 2m frames -> 1 + m."""

    def __init__(self, dims: int, cin: int, cout: int, temporal: bool, causal: bool = False):
        super().__init__()
        s = _stride(dims, temporal)
        self.conv = _conv(dims, cin, cout, tuple(4 if si == 2 else 3 for si in s), s, 1, causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest upsampling then conv3: avoids the checkerboard of transposed convs. Causal and
    temporal: 1 + m frames -> 1 + 2m (frame 0 stays one frame, as the encoder kept it alone)."""

    def __init__(self, dims: int, cin: int, cout: int, temporal: bool, causal: bool = False):
        super().__init__()
        self.scale = tuple(float(s) for s in _stride(dims, temporal))
        self.drop_first = causal and temporal
        self.conv = _conv(dims, cin, cout, 3, padding=1, causal=causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.conv(x[:, :, 1:] if self.drop_first else x)


class Encoder(nn.Module):
    """(B, C, [T,] H, W) -> (B, code_dim, [t,] h, w)."""

    def __init__(self, dims: int, channels: int, widths: list[int], num_res_blocks: int,
                 temporal_stages: int, code_dim: int, causal: bool = False):
        super().__init__()
        c = causal
        layers: list[nn.Module] = [_conv(dims, channels, widths[0], 3, padding=1, causal=c)]
        for i in range(len(widths) - 1):
            layers += [ResBlock(dims, widths[i], widths[i], c) for _ in range(num_res_blocks)]
            layers.append(Downsample(dims, widths[i], widths[i + 1], i < temporal_stages, c))
        layers += [ResBlock(dims, widths[-1], widths[-1], c) for _ in range(max(1, num_res_blocks))]
        layers += [_norm(widths[-1], c), nn.SiLU(), _conv(dims, widths[-1], code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, code_dim, [t,] h, w) -> (B, C, [T,] H, W); the mirror image of the Encoder."""

    def __init__(self, dims: int, channels: int, widths: list[int], num_res_blocks: int,
                 temporal_stages: int, code_dim: int, causal: bool = False):
        super().__init__()
        c = causal
        layers: list[nn.Module] = [_conv(dims, code_dim, widths[-1], 3, padding=1, causal=c)]
        layers += [ResBlock(dims, widths[-1], widths[-1], c) for _ in range(max(1, num_res_blocks))]
        for i in reversed(range(len(widths) - 1)):
            layers.append(Upsample(dims, widths[i + 1], widths[i], i < temporal_stages, c))
            layers += [ResBlock(dims, widths[i], widths[i], c) for _ in range(num_res_blocks)]
        layers += [_norm(widths[0], c), nn.SiLU(), _conv(dims, widths[0], channels, 3, padding=1, causal=c)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
