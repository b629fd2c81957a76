"""Feature statistics and the Fréchet distance between two Gaussians fitted to features.

FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), the quantity behind FID, FVD and our
digits distances. Everything is float64: float32 covariances of 2048-d features lose enough
precision that the matrix square root turns complex and FID drifts in the first decimal.

Covariances are unbiased (ddof=1, like np.cov and pytorch-fid) unless asked otherwise;
StyleGAN2-ADA divides by N (ddof=0). The choice is carried in `FeatureStats.ddof` so the
protocol record can say which was used.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import scipy.linalg

from nestgen.metrics.protocol import MetricResult, low_sample_note
from nestgen.storage import write_bytes_atomic

__all__ = [
    "FeatureStats", "RunningStats", "feature_stats", "frechet_sums", "frechet_stats", "frechet_distance",
    "frechet_distance_stats", "frechet_metric", "resolve_reference",
    "save_stats", "load_stats", "stats_hash",
]


@dataclass(frozen=True)
class FeatureStats:
    """Mean (d,) and covariance (d, d) of n feature vectors, float64."""
    mu: np.ndarray
    sigma: np.ndarray
    n: int = 0                 # 0 = unknown (e.g. stats loaded from a third-party .npz)
    ddof: int | None = 1       # None = unknown (third-party .npz)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def hash(self) -> str:
        return stats_hash(self.mu, self.sigma)


def feature_stats(features: np.ndarray, ddof: int = 1) -> FeatureStats:
    """Statistics of an (n, d) feature array, computed in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {x.shape}")
    if x.shape[0] <= ddof:
        raise ValueError(f"need more than {ddof} feature vectors, got {x.shape[0]}")
    mu = x.mean(axis=0)
    sigma = np.cov(x, rowvar=False, ddof=ddof).reshape(x.shape[1], x.shape[1])
    return FeatureStats(mu=mu, sigma=sigma, n=int(x.shape[0]), ddof=ddof)


def frechet_sums(features, shift: np.ndarray) -> dict[str, np.ndarray]:
    """Additive statistics of (n, d) features about a fixed shift c: n, sum of (x - c) and
    sum of (x - c)(x - c)^T. Chunks' sums add; `frechet_stats` turns a sum into mean and
    covariance. The naive x^T x / n - mu mu^T cancels catastrophically when feature means
    are large against their spread; about a c near the mean the sums stay small."""
    x = np.asarray(_to_numpy(features), dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != shift.shape[0]:
        raise ValueError(f"features must be (n, {shift.shape[0]}), got shape {x.shape}")
    x = x - shift
    return {"n": np.float64(x.shape[0]), "sum": x.sum(axis=0), "outer": x.T @ x}


def frechet_stats(s: dict[str, np.ndarray], shift: np.ndarray, ddof: int = 1) -> FeatureStats:
    n = float(s["n"])
    if n <= ddof:
        raise ValueError(f"need more than {ddof} feature vectors, got {n:g}")
    d = s["sum"] / n
    scatter = s["outer"] - n * np.outer(d, d)
    return FeatureStats(mu=shift + d, sigma=scatter / (n - ddof), n=int(round(n)), ddof=ddof)


class RunningStats:
    """Streaming mean/covariance: add feature batches one at a time, never holding them all
    (`frechet_sums` about the first batch's mean, summed)."""

    def __init__(self, ddof: int = 1):
        self.ddof = ddof
        self._shift: np.ndarray | None = None
        self._sums: dict[str, np.ndarray] | None = None

    @property
    def n(self) -> int:
        return 0 if self._sums is None else int(self._sums["n"])

    def update(self, features) -> "RunningStats":
        x = np.asarray(_to_numpy(features), dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (n, d), got shape {x.shape}")
        if x.shape[0] == 0:
            return self
        if self._shift is not None and x.shape[1] != self._shift.shape[0]:
            raise ValueError(f"feature dim changed from {self._shift.shape[0]} to {x.shape[1]}")
        if self._shift is None:
            self._shift = x.mean(axis=0)
        s = frechet_sums(x, self._shift)
        self._sums = s if self._sums is None else {k: self._sums[k] + s[k] for k in s}
        return self

    def stats(self) -> FeatureStats:
        if self._sums is None or self.n <= self.ddof:
            raise ValueError(f"need more than {self.ddof} feature vectors, got {self.n}")
        return frechet_stats(self._sums, self._shift, self.ddof)


def _to_numpy(x):
    if hasattr(x, "detach"):          # torch tensor, without importing torch here
        return x.detach().to("cpu").double().numpy()
    return x


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # scipy >= 1.16 deprecates `disp`; the bare call returns only the root on every version.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return scipy.linalg.sqrtm(a)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), robust like pytorch-fid's reference.

    sqrt(S1 S2) of near-singular covariances (fewer samples than dimensions, dead feature
    units) can come back non-finite or with imaginary parts from rounding; then eps*I is
    added to both covariances and the root retried. An imaginary part that survives that
    is a real error (not a PSD pair), so it raises instead of returning a wrong number.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all() or _bad_imag(covmean):
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if not np.isfinite(covmean).all():
        raise ValueError("matrix square root of S1 S2 is not finite even with eps*I added")
    if np.iscomplexobj(covmean):
        if _bad_imag(covmean):
            raise ValueError(f"sqrt(S1 S2) has imaginary component {np.abs(covmean.imag).max():.3g}; "
                             "covariances are not positive semi-definite")
        covmean = covmean.real
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return float(value)


def _bad_imag(m: np.ndarray, atol: float = 1e-3) -> bool:
    return bool(np.iscomplexobj(m) and not np.allclose(np.diagonal(m).imag, 0, atol=atol))


def frechet_distance_stats(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, eps=eps)


def frechet_metric(name: str, gen: FeatureStats, ref: FeatureStats, source: str, protocol: dict[str, Any],
                   eps: float = 1e-6) -> MetricResult:
    """The Fréchet distance `name` (FID, FVD, the digits distances) of sample statistics to
    reference statistics, with its protocol record: the caller's `protocol` (the metric, its
    inputs and feature net) plus what every Fréchet distance records alike: the reference
    (hash, count, `source`: where it came from, covariance ddof), the covariance conventions,
    and notes when a side has too few samples for a full-rank covariance (a reference count of
    0 is unknown) or the two covariances were computed with different ddof."""
    if ref.dim != gen.dim:
        raise ValueError(f"reference stats are {ref.dim}-d but the network gives {gen.dim}-d features")
    proto = {**protocol,
             "reference": {"stats_hash": ref.hash(), "num_samples": ref.n, "source": source, "ddof": ref.ddof},
             "covariance_ddof": gen.ddof, "sqrtm_eps": eps, "feature_dim": gen.dim}
    notes = [m for m in (low_sample_note(min(gen.n, ref.n) if ref.n else gen.n, gen.dim),) if m]
    if ref.ddof is not None and ref.ddof != gen.ddof:
        notes.append(f"reference covariance ddof={ref.ddof} differs from samples' ddof={gen.ddof}")
    if notes:
        proto["notes"] = notes
    return MetricResult(name, frechet_distance_stats(gen, ref, eps=eps), proto)


def resolve_reference(reference: FeatureStats | str | os.PathLike) -> tuple[FeatureStats, str]:
    """(stats, source): a FeatureStats in memory or a path/URL of an .npz with mu, sigma."""
    if isinstance(reference, FeatureStats):
        return reference, "in-memory"
    return load_stats(str(reference)), str(reference)


def stats_hash(mu: np.ndarray, sigma: np.ndarray, length: int = 16) -> str:
    """Short sha256 hex of the float64 little-endian bytes of mu and sigma (and their shapes).

    Identifies reference statistics in protocol records: two FIDs are comparable only if
    they were measured against the same hash.
    """
    h = hashlib.sha256()
    for arr in (mu, sigma):
        a = np.ascontiguousarray(np.asarray(arr, dtype="<f8"))
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:length]


def save_stats(url: str, stats: FeatureStats) -> str:
    """Write the usual .npz (keys mu, sigma; plus n and ddof) to any fsspec URL, atomically."""
    buf = io.BytesIO()
    extra = {} if stats.ddof is None else {"ddof": np.int64(stats.ddof)}
    np.savez(buf, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n), **extra)
    write_bytes_atomic(url, buf.getvalue())
    return url


def load_stats(url: str) -> FeatureStats:
    """Read an .npz with keys mu, sigma (ours, pytorch-fid's or ADM's reference batches' stats)."""
    with fsspec.open(url, "rb") as f:
        data = np.load(io.BytesIO(f.read()), allow_pickle=False)
        missing = [k for k in ("mu", "sigma") if k not in data.files]
        if missing:
            raise KeyError(f"{url}: missing key(s) {missing}; found {data.files}")
        n = int(data["n"]) if "n" in data.files else 0
        ddof = int(data["ddof"]) if "ddof" in data.files else None
        return FeatureStats(mu=data["mu"].astype(np.float64), sigma=data["sigma"].astype(np.float64),
                            n=n, ddof=ddof)
