"""Stand-ins for the standard feature networks: the call interfaces of StyleGAN2-ADA's
`inception-2015-12-05.pt` and StyleGAN-V's `i3d_torchscript.pt` (nestgen.metrics.feature_nets
describes them) with fixed random weights, written as TorchScript files as the real ones come.

The real files are never downloaded, and where they are not at hand a stand-in lets the whole
FID / IS / FVD path run: loading a pinned file, preprocessing, streamed statistics, the protocol
record. The paper-shape rehearsal (experiments/paper_shapes.py) runs the pipeline with them, and
the tests check the metric code against them. Their values mean nothing beside published ones;
the record names the file and its hash, so they are never mistaken for FIDs or FVDs. Each
refuses what its real network would be wrong to get (the Inception: not uint8 NCHW RGB; the
I3D: not 3 channels at 224x224 in [-1, 1] after its own rescaling), so a preprocessing mistake
fails here as well.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["StandInInception", "StandInI3D", "save_stand_in"]


class StandInInception(torch.nn.Module):
    """forward(img, return_features, use_fp16, no_output_bias) on uint8 NCHW RGB of any size:
    resized to `size` (299 as the real one) and mapped to [-1, 1] by (x - 128) / 128, pooled on
    an 8x8 grid; `features`-d features, or a softmax over `classes` (1008 as the real one), by
    weights drawn from a fixed seed."""

    def __init__(self, features: int = 64, classes: int = 1008, size: int = 299):
        super().__init__()
        self.size = size
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(192, features, generator=g) / 14)
        self.register_buffer("w", torch.randn(192, classes, generator=g) / 14)
        self.register_buffer("b", torch.randn(classes, generator=g))

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        if img.dtype != torch.uint8 or img.dim() != 4 or img.shape[1] != 3:
            raise RuntimeError("expected uint8 NCHW RGB")
        x = F.interpolate(img.to(torch.float32), size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = F.adaptive_avg_pool2d((x - 128.0) / 128.0, 8).flatten(1)
        if return_features:
            return torch.tanh(x @ self.proj)
        logits = x @ self.w
        return torch.softmax(logits if no_output_bias else logits + self.b, dim=1)


class StandInI3D(torch.nn.Module):
    """forward(x, rescale, resize, return_features) on (B, 3, T, H, W): rescale maps 0..255 to
    [-1, 1], resize goes to 224x224; `features`-d outputs from appearance and motion pooled on
    a 4x4 grid, projected by weights drawn from a fixed seed."""

    def __init__(self, features: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.register_buffer("proj", torch.randn(96, features, generator=g) / 10)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        x = x.to(torch.float32)
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        if x.shape[1] != 3 or x.shape[-1] != 224 or x.shape[-2] != 224:
            raise RuntimeError("expected (B, 3, T, 224, 224)")
        if bool(x.min() < -1.001) or bool(x.max() > 1.001):
            raise RuntimeError("expected values in [-1, 1]")
        look = F.adaptive_avg_pool3d(x, (1, 4, 4)).flatten(1)                                    # 48
        move = F.adaptive_avg_pool3d((x[:, :, 1:] - x[:, :, :-1]).abs(), (1, 4, 4)).flatten(1)   # 48
        return torch.cat([look, move], dim=1) @ self.proj


def save_stand_in(net: torch.nn.Module, path: str | Path) -> str:
    """Writes `net` as TorchScript to `path`; returns the file's sha256, the hash that loading
    it asks for (feature_nets pins every file it loads)."""
    with warnings.catch_warnings():          # torch 2.13 deprecates TorchScript; the real file is one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(path))
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
