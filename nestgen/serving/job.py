"""A validated generation request: what to decode, ready to share a batch with others."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.maskgit import shared_settings


@dataclass
class Job:
    labels: list[int]                 # one class id per row (the null class when unconditional)
    seeds: list[int]                  # one seed per row
    decode: DecodeConfig              # fully resolved and canonical: schedule string, steps, cache, ...
    schedule_name: str                # the preset asked for (or chosen by auto), else "custom"
    format: str                       # png | mp4 | tokens
    cond: torch.Tensor | None = None  # (rows, n_cond) given leading tokens (frame prediction)
    auto: dict | None = None          # how `auto` chose: queue rows, expected latency

    @property
    def rows(self) -> int:
        return len(self.labels)

    def group_key(self) -> tuple:
        """Jobs with equal keys run as one decode call: the same shared decode settings
        (schedule, steps, cache policy, ...; temperature and guidance scale are per row), and
        the same number of conditioning tokens, or none (decode() takes one cond tensor).
        The settings are compared as resolve_request normalised them."""
        return shared_settings(self.decode) + (None if self.cond is None else self.cond.shape[1],)


def rows_of(jobs: list[Job]) -> int:
    """Batch size in rows (Serve's batch_size_fn): a request for n samples is n rows."""
    return sum(j.rows for j in jobs)
