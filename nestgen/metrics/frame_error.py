"""Frame-prediction error: MSE and PSNR of predicted frames against ground truth.

Only the predicted frames count (frames [cond_frames:], e.g. 11 of 16 for K600-style
5-given/11-predicted); the given frames are copies and would inflate PSNR. Pixels are scaled
to [0, 1]. PSNR is computed per clip (over its predicted frames) and then averaged over
clips, the usual video-prediction convention; a perfect clip's MSE is floored at 1e-10, so
PSNR is at most 100 dB instead of infinite.
"""
from __future__ import annotations

import numpy as np
import torch

from nestgen.metrics.protocol import MetricResult

__all__ = ["frame_prediction_error"]

_MSE_FLOOR = 1e-10


def _as_float01(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype != np.uint8:
        raise TypeError(f"expected uint8 frames 0..255, got {a.dtype}")
    return a.astype(np.float64) / 255.0


def frame_prediction_error(pred, target, cond_frames: int = 0) -> dict[str, MetricResult]:
    """pred, target: uint8 (B, T, H, W[, C]) clips of the same shape, time on axis 1.

    Returns {"frame_pred_mse": ..., "frame_pred_psnr": ...}; PSNR's extra has per-frame
    means ("t05", ...) for plotting error growth over the prediction horizon.
    """
    p, t = _as_float01(pred), _as_float01(target)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} differ")
    if p.ndim < 4:
        raise ValueError(f"expected (B, T, H, W[, C]) clips, got shape {p.shape}")
    if not 0 <= cond_frames < p.shape[1]:
        raise ValueError(f"cond_frames={cond_frames} leaves no predicted frames of {p.shape[1]}")
    err = (p[:, cond_frames:] - t[:, cond_frames:]) ** 2
    axes = tuple(range(2, err.ndim))
    per_frame = err.mean(axis=axes)                      # (B, T_pred)
    per_clip = per_frame.mean(axis=1)                    # (B,)
    psnr_clip = 10.0 * np.log10(1.0 / np.maximum(per_clip, _MSE_FLOOR))
    psnr_frame = 10.0 * np.log10(1.0 / np.maximum(per_frame, _MSE_FLOOR)).mean(axis=0)
    proto = {
        "num_samples": int(p.shape[0]), "num_frames": int(p.shape[1]), "cond_frames": cond_frames,
        "predicted_frames": int(p.shape[1] - cond_frames), "pixel_scale": "[0, 1] from uint8 / 255",
        "psnr": "per clip over predicted frames, then mean over clips; MSE floored at 1e-10",
    }
    return {
        "frame_pred_mse": MetricResult("frame_pred_mse", float(per_clip.mean()),
                                       {"metric": "frame_pred_mse", **proto}),
        "frame_pred_psnr": MetricResult(
            "frame_pred_psnr", float(psnr_clip.mean()), {"metric": "frame_pred_psnr", **proto},
            extra={f"t{cond_frames + i:02d}": float(v) for i, v in enumerate(psnr_frame)}),
    }
