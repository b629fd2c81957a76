"""FVD with StyleGAN-V's TorchScript I3D (the Kinetics-400 I3D of the original FVD code).

Preprocessing modes (both recorded in the protocol, as they are not interchangeable):
  external (default): done here, as in common_metrics_on_video_quality's StyleGAN-V port:
      frames to [0, 1], shorter side bilinearly resized to 224 (align_corners=False, no
      antialias), centre-cropped to 224x224, mapped to [-1, 1]; the net is then called with
      rescale=False, resize=False.
  internal: StyleGAN-V's own metric code: uint8 (B, C, T, H, W) passed as-is with
      rescale=True, resize=True, letting the network scale and resize.
Clips must have `num_frames` frames (16, the standard) unless num_frames=None. FVD streams
(`fvd_metric`: nestgen.metrics.sums.StreamedMetric): a chunk of clips is reduced to summed
features where it was made; reference statistics stream through `i3d_stats`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nestgen.metrics.feature_nets import LoadedFeatureNet, on_worker
from nestgen.metrics.frechet import (FeatureStats, RunningStats, frechet_metric, frechet_stats, frechet_sums,
                                     resolve_reference)
from nestgen.metrics.inputs import iter_batches, videos_to_bcthw3
from nestgen.metrics.protocol import MetricResult
from nestgen.metrics.sums import Chunk, StreamedMetric, Sums

__all__ = ["i3d_preprocess", "i3d_features", "i3d_stats", "fvd_result", "fvd_metric", "I3D_SIZE", "I3D_BATCH"]

I3D_SIZE = 224
I3D_BATCH = 8             # clips per I3D forward pass
_RESIZE_TEXT = {
    "external": "here: shorter side bilinear to 224 (align_corners=False, no antialias), "
                "centre crop 224x224, [0,255] -> [-1,1]; net(rescale=False, resize=False)",
    "internal": "inside the network: net(rescale=True, resize=True) on uint8 0..255",
}


def i3d_preprocess(x: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """uint8 (B, C, T, H, W) -> float (B, C, T, size, size) in [-1, 1] (the 'external' mode)."""
    b, c, t, h, w = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w).float() / 255.0
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    frames = frames[:, :, top:top + size, left:left + size]
    frames = frames * 2.0 - 1.0
    return frames.reshape(b, t, c, size, size).permute(0, 2, 1, 3, 4).contiguous()


@torch.inference_mode()
def i3d_features(net: LoadedFeatureNet, x: torch.Tensor, mode: str = "external") -> np.ndarray:
    """float64 (B, 400) features of uint8 (B, 3, T, H, W) clips."""
    x = x.to(net.device, non_blocking=True)
    if mode == "external":
        f = net(i3d_preprocess(x), rescale=False, resize=False, return_features=True)
    else:
        f = net(x, rescale=True, resize=True, return_features=True)
    return f.reshape(f.shape[0], -1).double().cpu().numpy()


def _checked_clips(batch, layout: str, num_frames: int | None) -> torch.Tensor:
    x = videos_to_bcthw3(batch, layout)
    if num_frames is not None and x.shape[2] != num_frames:
        raise ValueError(f"FVD clips must have {num_frames} frames, got {x.shape[2]} "
                         "(pass num_frames=None to allow other lengths; it is recorded)")
    return x


def i3d_stats(net: LoadedFeatureNet, videos, batch_size: int = I3D_BATCH, layout: str = "auto",
              mode: str = "external", num_frames: int | None = 16, ddof: int = 1) -> FeatureStats:
    """Reference statistics of uint8 clips (an array or an iterable of batches, e.g. of a data
    set) to compare samples with, or to save with frechet.save_stats."""
    if mode not in _RESIZE_TEXT:
        raise ValueError(f"mode must be 'external' or 'internal', got {mode!r}")
    stats = RunningStats(ddof=ddof)
    for batch in iter_batches(videos, batch_size):
        stats.update(i3d_features(net, _checked_clips(batch, layout, num_frames), mode))
    if stats.n == 0:
        raise ValueError("no videos were given")
    return stats.stats()


def fvd_result(net: LoadedFeatureNet, gen: FeatureStats, seen: dict, reference: FeatureStats | str,
               mode: str = "external", num_frames: int | None = 16, eps: float = 1e-6,
               source: str = "") -> MetricResult:
    """FVD of sample statistics against the reference, with its protocol record (`source`:
    where in-memory reference statistics came from)."""
    ref, resolved = resolve_reference(reference)
    proto: dict[str, Any] = {
        "metric": "fvd",
        "num_samples": gen.n,
        "clip_shapes_thw": seen["clip_shapes_thw"],
        "num_frames": num_frames,
        "input_conventions": "uint8 clips 0..255 -> (B, 3, T, H, W); grayscale repeated to 3 channels",
        "preprocess_mode": mode,
        "resize": _RESIZE_TEXT[mode],
        "feature_net": net.record(),
    }
    return frechet_metric("fvd", gen, ref, source or resolved, proto, eps)


def fvd_metric(net: LoadedFeatureNet, reference: FeatureStats | str, source: str = "", mode: str = "external",
               num_frames: int | None = 16, layout: str = "auto") -> StreamedMetric:
    """FVD of uint8 clips against reference statistics (FeatureStats, or an .npz path/URL;
    `source`: where in-memory ones came from), streamed. Features are summed about the
    reference mean. num_frames=None: clips of any length (recorded)."""
    if mode not in _RESIZE_TEXT:
        raise ValueError(f"mode must be 'external' or 'internal', got {mode!r}")
    ref, resolved = resolve_reference(reference)
    load, shift, source = on_worker(net), ref.mu, source or resolved

    def features(chunk: Chunk, device) -> Sums:
        here = load(device)
        f = [i3d_features(here, _checked_clips(b, layout, num_frames), mode)
             for b in iter_batches(chunk.pixels, I3D_BATCH)]
        return frechet_sums(np.concatenate(f), shift)

    def results(sums: Sums, shape: tuple) -> list[MetricResult]:
        clip = list(videos_to_bcthw3(np.zeros((1, *shape), np.uint8), layout).shape[2:])
        seen = {"num_samples": int(sums["n"]), "clip_shapes_thw": [clip]}
        return [fvd_result(net, frechet_stats(sums, shift), seen, ref, mode, num_frames if num_frames else clip[0],
                           source=source)]
    return StreamedMetric(features, results)
