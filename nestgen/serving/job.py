"""A validated generation request as the decoder takes it (a Job), and how jobs share a batch.

One Serve batch (serve.batching request) becomes one decode call per group of jobs whose
forward passes can be shared: the same schedule, cache policy and conditioning length;
temperature and guidance scale are per row (nestgen.decoding.maskgit.RowSettings), so they never
split a group. The step loop (batching step) needs no grouping: it groups rows per step.
"""
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


def group_jobs(jobs: list[Job]) -> list[list[int]]:
    """Indices of `jobs` grouped by Job.group_key(), groups in order of first appearance and
    indices in arrival order, so every request's rows stay contiguous and in its own order."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.group_key(), []).append(i)
    return list(groups.values())


def row_slices(jobs: list[Job]) -> list[slice]:
    """Where each job's rows sit in the concatenated batch."""
    out, start = [], 0
    for j in jobs:
        out.append(slice(start, start + j.rows))
        start += j.rows
    return out
