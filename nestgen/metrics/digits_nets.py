"""Small CNN feature networks for the embedded digits data (the offline stand-ins for
Inception and I3D). Their Fréchet distances are named fd_digits / fvd_digits, never FID/FVD:
the numbers are only comparable between runs that use the same trained net (its hash is in
every protocol record).

Both nets take uint8 pixels at any size, reduce to grayscale and resize to a fixed size
themselves (`preprocess`), so generated 8x8 token images, decoded 32x32 images or clips of
any resolution all go through the same path.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DigitImageNet", "DigitClipNet", "to_gray_float", "net_hash", "build_digits_net"]


def to_gray_float(x, spatial_dims: int, device: torch.device | None = None) -> torch.Tensor:
    """uint8 array/tensor -> float [0,1] with a channel axis of 1.

    spatial_dims=2 (images): (N,H,W) | (N,H,W,C) | (N,C,H,W) -> (N,1,H,W)
    spatial_dims=3 (clips):  (B,T,H,W) | (B,T,H,W,C) | (B,C,T,H,W) -> (B,1,T,H,W)
    RGB is averaged to gray (the digits are gray; colour carries no class information).
    The uint8 data moves to `device` before conversion (a quarter of the float32 bytes).
    A trailing dim of 1 or 3 is read as channels; a dim-1 of 1 or 3 (with ndim = spatial+2)
    as channels-first.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels 0..255, got {t.dtype}")
    if t.ndim == spatial_dims + 1:
        t = t.unsqueeze(1)
    elif t.ndim == spatial_dims + 2:
        if t.shape[-1] in (1, 3):
            t = t.movedim(-1, 1)
        elif t.shape[1] not in (1, 3):
            raise ValueError(f"cannot find a channel axis of size 1 or 3 in shape {tuple(t.shape)}")
    else:
        raise ValueError(f"expected {spatial_dims + 1}-d or {spatial_dims + 2}-d uint8 input, "
                         f"got shape {tuple(t.shape)}")
    if device is not None:
        t = t.to(device, non_blocking=True)
    return t.float().mean(dim=1, keepdim=True) / 255.0


class DigitImageNet(nn.Module):
    """Digit classifier; `features` are the 64-d penultimate pre-activations."""
    kind = "digits_image_cnn"

    def __init__(self, size: int = 16, feat_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.config = {"size": size, "feat_dim": feat_dim, "num_classes": num_classes}
        self.size = size
        # ~0.7M MACs per image: a few seconds per training run on a 2-core CPU
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(64 * (size // 4) ** 2, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    def preprocess(self, images) -> torch.Tensor:
        """uint8 images, any size/layout -> (N, 1, size, size) in [0, 1] (background 0, so
        zero padding in the convs is background too)."""
        x = to_gray_float(images, 2, self.fc.weight.device)
        if x.shape[-2:] != (self.size, self.size):
            # antialias matters only when shrinking (e.g. 64x64 decoded images)
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-activation: ReLU outputs have dead units whose zero variance makes the
        # covariance singular and the Fréchet distance's matrix root ill-conditioned.
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


def _block(cin: int, cout: int, k: tuple[int, int, int], stride: tuple[int, int, int]) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, k, stride=stride, padding=tuple(i // 2 for i in k), bias=False),
            nn.BatchNorm3d(cout), nn.ReLU()]


class DigitClipNet(nn.Module):
    """Small 3D CNN on moving-digit clips: classifies the digit (`head`) and, as an auxiliary
    task, whether the frames are in their true order (`order_head`). The auxiliary task
    makes the 64-d `features` depend on motion, so fvd_digits also sees temporal
    incoherence, not only per-frame digit shape."""
    kind = "digits_clip_cnn3d"

    def __init__(self, size: int = 32, feat_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.config = {"size": size, "feat_dim": feat_dim, "num_classes": num_classes}
        self.size = size
        self.body = nn.Sequential(
            # Two per-frame strided 2D convs first (digit shape at full resolution, cheap),
            # then 3D convs that see motion at low resolution. BatchNorm: without it this net
            # barely trained in a CPU budget (val acc ~0.4 vs ~0.99 with it).
            *_block(1, 16, (1, 3, 3), (1, 2, 2)),
            *_block(16, 32, (1, 3, 3), (1, 2, 2)),
            *_block(32, 64, (3, 3, 3), (2, 2, 2)),
            *_block(64, 64, (3, 3, 3), (1, 1, 1)),
            # max over space (a digit anywhere counts fully); averaged over time in features()
            nn.AdaptiveMaxPool3d((None, 1, 1)),
        )
        self.fc = nn.Linear(64, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)
        self.order_head = nn.Linear(feat_dim, 2)

    def preprocess(self, clips) -> torch.Tensor:
        """uint8 clips (B,T,H,W[,C]) any size -> (B, 1, T, size, size) in [0, 1]."""
        x = to_gray_float(clips, 3, self.fc.weight.device)
        b, c, t, h, w = x.shape
        if (h, w) != (self.size, self.size):
            frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            frames = F.interpolate(frames, size=(self.size, self.size), mode="bilinear",
                                   align_corners=False, antialias=True)
            x = frames.reshape(b, t, c, self.size, self.size).permute(0, 2, 1, 3, 4)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean(dim=(2, 3, 4))       # (B, 64)
        return self.fc(h)                            # pre-activation, see DigitImageNet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


_KINDS = {DigitImageNet.kind: DigitImageNet, DigitClipNet.kind: DigitClipNet}


def build_digits_net(kind: str, config: dict[str, Any]) -> nn.Module:
    if kind not in _KINDS:
        raise ValueError(f"unknown digits net kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind](**config)


def net_hash(net: nn.Module, length: int = 16) -> str:
    """Short sha256 of the weights (names, shapes, float32 bytes, sorted): identifies the
    feature net in protocol records whether it was just trained or loaded from a file."""
    h = hashlib.sha256(getattr(net, "kind", type(net).__name__).encode())
    for name, t in sorted(net.state_dict().items()):
        a = t.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(name.encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:length]
