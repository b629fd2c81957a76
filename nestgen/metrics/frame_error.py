"""Frame-prediction error: MSE and PSNR of predicted frames against ground truth.

Only the predicted frames count (frames [cond_frames:], e.g. 11 of 16 for K600-style
5-given/11-predicted); the given frames are copies and would inflate PSNR. Pixels are scaled
to [0, 1]. PSNR is computed per clip (over its predicted frames) and then averaged over
clips, the usual video-prediction convention; a perfect clip's MSE is floored at 1e-10, so
PSNR is at most 100 dB instead of infinite. Streamed (`frame_pred_metric`:
nestgen.metrics.sums.StreamedMetric): a chunk of predicted clips and their true clips
(Chunk.targets) is reduced to summed errors where it was made.
"""
from __future__ import annotations

from typing import Callable

from nestgen.metrics.protocol import MetricResult
from nestgen.metrics.sums import Chunk, StreamedMetric, Sums, frame_error_sums, frame_errors

__all__ = ["frame_error_results", "frame_pred_metric"]


def frame_error_results(s: Sums, cond_frames: int, num_frames: int) -> dict[str, MetricResult]:
    """{"frame_pred_mse": ..., "frame_pred_psnr": ...} from summed statistics (nestgen.metrics.sums)
    of any number of chunks; PSNR's extra has per-frame means ("t05", ...) for plotting error
    growth over the prediction horizon."""
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


def frame_pred_metric(cond_frames: Callable[[int], int]) -> StreamedMetric:
    """Frame-prediction MSE and PSNR of uint8 (B, T, H, W[, C]) clips (time on axis 1) against
    their true clips, streamed; `cond_frames(T)`: how many leading frames of a T-frame clip
    were given (not scored)."""
    def features(chunk: Chunk, device) -> Sums:
        return frame_error_sums(chunk.pixels, chunk.targets, cond_frames(chunk.pixels.shape[1]))

    def results(sums: Sums, shape: tuple) -> list[MetricResult]:
        return list(frame_error_results(sums, cond_frames(shape[0]), int(shape[0])).values())
    return StreamedMetric(features, results)
