"""One Serve batch -> decode calls: requests whose forward passes can be shared run together
(the same schedule, cache policy and conditioning length; temperature and guidance scale are
per row, see nestgen.decoding.maskgit.RowSettings)."""
from __future__ import annotations

from nestgen.serving.job import Job


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
