"""Metric statistics that add up: computed per chunk of samples where the samples are,
summed anywhere, turned into the metric value at the end.

Every statistic here is a dict of float64 arrays whose values over disjoint chunks add:
the metric of a union of chunks is the metric of the sum of their statistics, exactly up
to float rounding. So an evaluation streams (workers return per-chunk sums, the driver
keeps one row per chunk however many samples a chunk holds), and a bootstrap over chunks
is a weighted sum of the rows (`weighted`, with counts from nestgen.metrics.intervals).

  frechet:   n, sum of (x - c), sum of (x - c)(x - c)^T about a fixed shift c
             (nestgen.metrics.frechet.frechet_sums, next to the distance).
  classes:   per class, samples asked for and samples the classifier gave that class.
  inception: per split, count, sum of p(y|x) and of sum_y p log p (Inception Score).
  frames:    count, sums of per-clip MSE and PSNR, per-frame PSNR sums (frame prediction).

A metric in this form is a `StreamedMetric`: `features` reduce a `Chunk` of samples to its
sums where the samples are (a Ray worker, on its device), `results` turn the sums of any set
of chunks into the values with their protocol records. Each metric module builds its own
(fid.fid_metric, fvd.fvd_metric, digits_metrics.digits_frechet_metric, ...); the evaluation's
registry (nestgen.evaluation.quality) picks them, and `StreamedMetric.over` runs one over
chunks in one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from scipy.special import xlogy

from nestgen.metrics.protocol import MetricResult

__all__ = ["Sums", "Chunk", "StreamedMetric", "chunks_of", "add", "weighted", "contiguous_parts", "class_sums",
           "accuracy", "inception_sums", "inception_score", "frame_error_sums", "frame_errors"]

Sums = dict[str, np.ndarray]


@dataclass
class Chunk:
    """A chunk of one variant's samples, where they were decoded."""
    pixels: np.ndarray                 # uint8 images / clips
    labels: np.ndarray                 # the classes asked for
    targets: np.ndarray | None         # frame prediction: the true clips' pixels
    index: np.ndarray                  # sample indices in 0..n-1
    n: int                             # samples per variant


FeatureFn = Callable[[Chunk, object], Sums]                       # (chunk, torch device) -> sums
ResultFn = Callable[[Sums, tuple], list[MetricResult]]              # (summed sums, sample shape) -> results


@dataclass
class StreamedMetric:
    """A metric as statistics that add up. `features` closures are pickled to the workers, so
    they capture only what they need (a small net, a reference mean, a feature-net path)."""
    features: FeatureFn
    results: ResultFn

    def over(self, chunks: Iterable[Chunk], device="cpu") -> list[MetricResult]:
        """The results of every chunk's sums added up, each chunk reduced as it comes."""
        total, shape = None, ()
        for c in chunks:
            total, shape = add(total, self.features(c, device)), tuple(c.pixels.shape[1:])
        if total is None:
            raise ValueError("no samples were given")
        return self.results(total, shape)


def chunks_of(pixels: np.ndarray, labels=None, targets: np.ndarray | None = None,
              size: int | None = None) -> Iterable[Chunk]:
    """Samples (and their labels, true clips) as chunks of `size` (None: one chunk)."""
    n = len(pixels)
    labels = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels)
    for a in range(0, n, size or max(n, 1)):
        z = min(n, a + (size or n))
        yield Chunk(pixels[a:z], labels[a:z], None if targets is None else targets[a:z], np.arange(a, z), n)
MSE_FLOOR = 1e-10          # a perfect clip's PSNR is 100 dB instead of infinite


def add(a: Sums | None, b: Sums) -> Sums:
    if a is None:
        return {k: np.array(v, dtype=np.float64) for k, v in b.items()}
    return {k: a[k] + b[k] for k in a}


def weighted(rows: Sums, weights: np.ndarray) -> Sums:
    """Sum over the leading (chunk) axis of every array, chunk k counted weights[k] times."""
    w = np.asarray(weights, dtype=np.float64)
    return {k: np.tensordot(w, v, axes=1) for k, v in rows.items()}


def contiguous_parts(index: np.ndarray, n: int, parts: int) -> np.ndarray:
    """Part of each sample index when 0..n-1 is cut into `parts` contiguous runs, part i
    being [i*n//parts, (i+1)*n//parts) (the Inception Score's split order)."""
    bounds = np.arange(parts) * n // parts
    return np.searchsorted(bounds, np.asarray(index), side="right") - 1


def class_sums(pred, labels, num_classes: int) -> Sums:
    pred, labels = np.asarray(pred, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if pred.shape != labels.shape:
        raise ValueError(f"{len(pred)} predictions but {len(labels)} labels")
    return {"asked": np.bincount(labels, minlength=num_classes).astype(np.float64),
            "correct": np.bincount(labels[pred == labels], minlength=num_classes).astype(np.float64)}


def accuracy(s: Sums) -> tuple[float, dict[str, float]]:
    """(share of samples given the class asked for, {class_c: that share within class c})."""
    asked, correct = s["asked"], s["correct"]
    per_class = {f"class_{c}": float(correct[c] / asked[c]) for c in np.flatnonzero(asked)}
    return float(correct.sum() / asked.sum()), per_class


def inception_sums(probs, split: np.ndarray, num_splits: int) -> Sums:
    """probs (n, classes) of samples whose split ids (contiguous_parts) are `split`."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(num_splits)[np.asarray(split)]                    # (n, splits)
    return {"count": onehot.sum(0), "p": onehot.T @ p, "plogp": onehot.T @ xlogy(p, p).sum(1)}


def inception_score(s: Sums) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split; (mean, std) over the splits that have samples
    (a bootstrap draw of chunks can leave a split empty). xlogy: 0 log 0 = 0."""
    keep = s["count"] > 0
    if not keep.any():
        raise ValueError("no samples in any Inception Score split")
    count = s["count"][keep]
    py = s["p"][keep] / count[:, None]
    kl = s["plogp"][keep] / count - xlogy(py, py).sum(1)
    scores = np.exp(kl)
    return float(scores.mean()), float(scores.std())


def frame_error_sums(pred, target, cond_frames: int) -> Sums:
    """uint8 (B, T, H, W[, C]) clips; only frames [cond_frames:] count (the given ones are copies)."""
    p, t = _as_float01(pred), _as_float01(target)
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and target {t.shape} differ")
    if p.ndim < 4:
        raise ValueError(f"expected (B, T, H, W[, C]) clips, got shape {p.shape}")
    if not 0 <= cond_frames < p.shape[1]:
        raise ValueError(f"cond_frames={cond_frames} leaves no predicted frames of {p.shape[1]}")
    err = (p[:, cond_frames:] - t[:, cond_frames:]) ** 2
    per_frame = err.mean(axis=tuple(range(2, err.ndim)))            # (B, T_pred)
    per_clip = per_frame.mean(axis=1)
    return {"count": np.float64(len(p)), "mse": per_clip.sum(),
            "psnr": (10.0 * np.log10(1.0 / np.maximum(per_clip, MSE_FLOOR))).sum(),
            "psnr_frame": (10.0 * np.log10(1.0 / np.maximum(per_frame, MSE_FLOOR))).sum(axis=0)}


def frame_errors(s: Sums) -> tuple[float, float, np.ndarray]:
    """(mean per-clip MSE, mean per-clip PSNR, mean PSNR of each predicted frame)."""
    n = float(s["count"])
    return float(s["mse"] / n), float(s["psnr"] / n), s["psnr_frame"] / n


def _as_float01(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.dtype != np.uint8:
        raise TypeError(f"expected uint8 frames 0..255, got {a.dtype}")
    return a.astype(np.float64) / 255.0
