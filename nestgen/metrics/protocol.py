"""A metric value together with the protocol that produced it.

Published FID/FVD numbers are most often irreproducible because sample counts, reference
statistics, resizing and feature networks differ silently. So no metric here returns a bare
float: `MetricResult.protocol` records all of them, and `flat()` gives loggable key/values.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MetricResult", "bytes_sha256", "short", "low_sample_note"]

# Hash length shown in protocol records (sha256 prefix); the full hash is kept alongside.
SHORT = 16


@dataclass
class MetricResult:
    name: str                       # what it is: fid, inception_score, fvd, fd_digits, ...
    value: float
    protocol: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)   # e.g. inception_score_std

    def flat(self) -> dict[str, Any]:
        """{name: value, name/extra_key: ..., name/protocol/a.b: ...} for metric/param loggers."""
        out: dict[str, Any] = {self.name: self.value}
        out.update({f"{self.name}/{k}": v for k, v in self.extra.items()})

        def walk(d: dict, prefix: str) -> None:
            for k, v in d.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(v, dict):
                    walk(v, key)
                else:
                    out[f"{self.name}/protocol/{key}"] = v
        walk(self.protocol, "")
        return out


def short(hexdigest: str) -> str:
    return hexdigest[:SHORT]


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def low_sample_note(n: int, dim: int) -> str | None:
    """A warning for the record when the covariance cannot be full rank."""
    if n <= dim:
        return (f"only {n} samples for {dim}-d features: covariance is rank-deficient, the "
                "distance is biased upward and not comparable to published numbers")
    return None
