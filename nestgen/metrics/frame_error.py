"""Frame-prediction error: MSE and PSNR of predicted frames against ground truth.

Only the predicted frames count (frames [cond_frames:], e.g. 11 of 16 for K600-style
5-given/11-predicted); the given frames are copies and would inflate PSNR. Pixels are scaled
to [0, 1]. PSNR is computed per clip (over its predicted frames) and then averaged over
clips, the usual video-prediction convention; a perfect clip's MSE is floored at 1e-10, so
PSNR is at most 100 dB instead of infinite.
"""
from __future__ import annotations

from nestgen.metrics.protocol import MetricResult
from nestgen.metrics.sums import Sums, frame_error_sums, frame_errors

__all__ = ["frame_prediction_error", "frame_error_results"]


def frame_prediction_error(pred, target, cond_frames: int = 0) -> dict[str, MetricResult]:
    """pred, target: uint8 (B, T, H, W[, C]) clips of the same shape, time on axis 1.

    Returns {"frame_pred_mse": ..., "frame_pred_psnr": ...}; PSNR's extra has per-frame
    means ("t05", ...) for plotting error growth over the prediction horizon.
    """
    return frame_error_results(frame_error_sums(pred, target, cond_frames), cond_frames, int(pred.shape[1]))


def frame_error_results(s: Sums, cond_frames: int, num_frames: int) -> dict[str, MetricResult]:
    """The two results from summed statistics (nestgen.metrics.sums) of any number of chunks."""
    mse, psnr, psnr_frame = frame_errors(s)
    proto = {
        "num_samples": int(s["count"]), "num_frames": num_frames, "cond_frames": cond_frames,
        "predicted_frames": num_frames - cond_frames, "pixel_scale": "[0, 1] from uint8 / 255",
        "psnr": "per clip over predicted frames, then mean over clips; MSE floored at 1e-10",
    }
    return {
        "frame_pred_mse": MetricResult("frame_pred_mse", mse, {"metric": "frame_pred_mse", **proto}),
        "frame_pred_psnr": MetricResult(
            "frame_pred_psnr", psnr, {"metric": "frame_pred_psnr", **proto},
            extra={f"t{cond_frames + i:02d}": float(v) for i, v in enumerate(psnr_frame)}),
    }
