"""Streaming evaluation: samples never gather in one place.

The work is a list of `BatchJob`s: one batch of requests of one prepared variant each
(nestgen.evaluation.variants), with the plan that says how samples are reduced. The caller
says where they run with a `BatchMap`, jobs in, their `BatchStats` out in the jobs' order:
the builtin `map` over `run_batch` in one process (nestgen.evaluation.run.local_map), or a
pool of Ray actors (pipelines.evaluate). A worker decodes a job's requests, renders them,
and reduces them at once to summed metric statistics (nestgen.metrics.sums) per chunk of
samples: `run_batch`, where the model is. The driver adds the batches up (`VariantStream`):
per variant and metric it keeps one row of sums per chunk, `evaluate.interval_chunks` rows
whatever the number of samples, and the first `evaluate.grid_samples` samples for the grids.
So what the driver holds does not grow with the number of samples. Chunks are the same for
every variant, and the rows are what the bootstrap resamples (the same draws for every
variant: paired, nestgen.metrics.intervals).

A chunk holds whole groups of samples that share their conditioning: frame prediction's
requests cycle through held-out clips (sample i conditions on clip i % groups), and the
samples of one clip are not independent draws, so the bootstrap resamples clips, every
sample of a clip in the same chunk (a group bootstrap). Repeating a clip under other decode
seeds is kept, rather than capping the samples at the clip count: the set metrics (FVD's
covariance) need the samples, and the held-out split is small (100 clips on the moving
digits, a third of them the schedule search's). Without conditioning every sample is its
own group, and chunks are contiguous runs of samples.

A Fréchet distance grows as samples get fewer, so where the real-data row
(nestgen.evaluation.real) has fewer rows than a variant has samples, each variant's Fréchet
values are also read at the row's count (`StreamPlan.matched`, `VariantStream.at_count`):
from the chunk rows already kept, at the cost of a few more `finish` calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TextIO

import numpy as np

from nestgen.decoding.worker import DecodeWorker
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.variants import PreparedVariant, Requests, VariantResult
from nestgen.metrics.intervals import resample_counts
from nestgen.metrics.sums import Chunk, FeatureFn, Sums, contiguous_parts, weighted


@dataclass(frozen=True)
class StreamPlan:
    """How one pass over the requests is reduced: n samples per variant in `chunks` chunks
    of whole groups (sample i in group i % groups: the conditioning clips the requests
    cycle through, Requests.groups; 0: each sample its own group), the first `grid` samples
    kept, `replicates` bootstrap draws; `matched` > 0: the count-biased values are also read
    at that many samples (the real-data row's count, when smaller than n)."""
    n: int
    chunks: int
    grid: int = 0
    replicates: int = 0
    seed: int = 0
    groups: int = 0
    matched: int = 0

    @property
    def num_groups(self) -> int:
        return self.groups or self.n

    @property
    def num_chunks(self) -> int:
        return min(self.chunks, self.num_groups)

    def chunk_of(self, index: np.ndarray) -> np.ndarray:
        """The chunk of each sample: contiguous runs of groups."""
        return contiguous_parts(np.asarray(index) % self.num_groups, self.num_groups, self.num_chunks)


@dataclass
class BatchStats:
    """What a worker returns for one batch: no samples beyond the grid's."""
    start: int
    count: int
    seconds: float
    sums: dict[str, dict[int, Sums]]     # metric -> chunk -> summed statistics
    grid: np.ndarray | None              # pixels of this batch's samples among the first plan.grid
    sample_shape: tuple[int, ...]        # one sample's pixel shape (frames for FVD), also when grid is None


@dataclass(frozen=True)
class BatchJob:
    """One batch: requests [start, start + len(requests)) decoded as `variant` (its prepared
    decode travels with it) and reduced as `plan` says."""
    variant: PreparedVariant
    requests: Requests
    start: int
    plan: StreamPlan


# where the batches run: every job in, its BatchStats out, in the jobs' order
BatchMap = Callable[[list[BatchJob]], Iterable[BatchStats]]


def run_batch(worker: DecodeWorker, features: dict[str, FeatureFn], job: BatchJob) -> BatchStats:
    """Decode a job's requests as its variant, timed, render, and reduce to chunk sums."""
    v, requests, start, plan = job.variant, job.requests, job.start, job.plan
    b = worker.run(v.decode, requests.labels, requests.seeds, requests.cond, render=True, prep=v.prep)
    targets = None if requests.target_tokens is None else worker.render(requests.target_tokens)
    sums = reduce_batch(b.pixels, requests.labels.numpy(), targets, start, plan, features, worker.device)
    keep = min(len(requests), plan.grid - start)
    return BatchStats(start, len(requests), b.seconds, sums, b.pixels[:keep] if keep > 0 else None,
                      tuple(b.pixels.shape[1:]))


def reduce_batch(pixels: np.ndarray, labels: np.ndarray, targets: np.ndarray | None, start: int, plan: StreamPlan,
                 features: dict[str, FeatureFn], device) -> dict[str, dict[int, Sums]]:
    """Rendered samples [start, start + len) reduced to each metric's sums per chunk."""
    index = np.arange(start, start + len(pixels))
    chunk = plan.chunk_of(index)
    sums: dict[str, dict[int, Sums]] = {name: {} for name in features}
    for c in np.unique(chunk):
        at = np.flatnonzero(chunk == c)          # not contiguous when groups cycle
        part = Chunk(pixels[at], labels[at], None if targets is None else targets[at], index[at], plan.n)
        for name, fn in features.items():
            sums[name][int(c)] = fn(part, device)
    return sums


class VariantStream:
    """The driver's running total for one variant (or for the real-data row: v None)."""

    def __init__(self, v: PreparedVariant | None, plan: StreamPlan):
        self.variant, self.plan = v, plan
        self.rows: dict[str, Sums] = {}
        self.grid: list[np.ndarray] = []
        self.seconds = 0.0
        self.count = 0
        self.sample_shape: tuple[int, ...] = ()

    def add(self, b: BatchStats) -> None:
        self.rows_from(b.sums, b.sample_shape, b.count)
        if b.grid is not None:
            self.grid.append(b.grid)
        self.seconds += b.seconds

    def rows_from(self, sums: dict[str, dict[int, Sums]], sample_shape: tuple[int, ...], count: int) -> None:
        """Add one batch's per-chunk sums."""
        for name, per_chunk in sums.items():
            for c, s in per_chunk.items():
                rows = self.rows.setdefault(name, {k: np.zeros((self.plan.num_chunks, *np.shape(x)))
                                                   for k, x in s.items()})
                for k, x in s.items():
                    rows[k][c] += x
        self.sample_shape = sample_shape
        self.count += count

    def values(self, suite: QualitySuite, record: bool = True) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """(metrics on all samples, their bootstrap replicate values); `record` keeps the protocols."""
        total = {name: {k: x.sum(0) for k, x in rows.items()} for name, rows in self.rows.items()}
        metrics = suite.finish(total, self.sample_shape, record)
        replicates: dict[str, list[float]] = {k: [] for k in metrics}
        for w in resample_counts(self.plan.num_chunks, self.plan.replicates, self.plan.seed):
            values = suite.finish({name: weighted(rows, w) for name, rows in self.rows.items()},
                                  self.sample_shape, record=False)
            for k in replicates:
                replicates[k].append(values[k])
        return metrics, {k: np.asarray(r) for k, r in replicates.items() if r}

    def at_count(self, suite: QualitySuite, count: int, values: list[str]) -> dict[str, float]:
        """`values` at `count` samples, fewer than the stream's: the mean over disjoint runs of
        k consecutive chunks, for the k whose runs hold `count` samples, else interpolated
        linearly in 1/n between the two k whose runs bracket it (adjacent counts: the line is
        no extrapolation). {} when one chunk already holds more than `count` samples."""
        sizes = np.bincount(self.plan.chunk_of(np.arange(self.plan.n)), minlength=self.plan.num_chunks)
        runs = {k: [np.arange(i, i + k) for i in range(0, self.plan.num_chunks - k + 1, k)]
                for k in range(1, self.plan.num_chunks + 1)}
        held = {k: float(np.mean([sizes[r].sum() for r in rs])) for k, rs in runs.items()}
        below = [k for k in runs if held[k] <= count]
        if not below or not values:
            return {}
        lo = max(below)
        ks = [lo] if held[lo] == count or lo == self.plan.num_chunks else [lo, lo + 1]
        means = []
        for k in ks:
            got = []
            for r in runs[k]:
                w = np.zeros(self.plan.num_chunks)
                w[r] = 1.0
                got.append(suite.finish({name: weighted(rows, w) for name, rows in self.rows.items()},
                                        self.sample_shape, record=False))
            means.append({v: float(np.mean([g[v] for g in got])) for v in values})
        if len(ks) == 1:
            return means[0]
        t = (1 / count - 1 / held[ks[0]]) / (1 / held[ks[1]] - 1 / held[ks[0]])
        return {v: means[0][v] + t * (means[1][v] - means[0][v]) for v in values}

    def result(self, suite: QualitySuite) -> VariantResult:
        v = self.variant
        if self.count != self.plan.n:
            raise RuntimeError(f"{v.variant.name}: {self.count} of {self.plan.n} samples came back")
        metrics, replicates = self.values(suite)
        at_rows = (self.at_count(suite, self.plan.matched, [m for m in suite.count_biased() if m in metrics])
                   if 0 < self.plan.matched < self.plan.n else {})
        return VariantResult(v.variant, str(v.prep.schedule), v.gflops, self.seconds / self.count, metrics,
                             grid=np.concatenate(self.grid) if self.grid else None, replicates=replicates,
                             at_rows=at_rows)


def stream_variants(suite: QualitySuite, variants: list[PreparedVariant], requests: Requests, plan: StreamPlan,
                    batch_size: int, map_batches: BatchMap, bar: bool | TextIO = True) -> list[VariantResult]:
    """Every variant over all requests in batches of `batch_size`, run by `map_batches` and
    merged as they come (variant by variant, so the driver holds one variant's chunk rows at
    a time), with a progress bar (`bar`: on stderr, on that stream, or False: none)."""
    from tqdm.auto import tqdm
    n = len(requests)
    jobs = [BatchJob(v, requests.chunk(start, start + batch_size), start, plan)
            for v in variants for start in range(0, n, batch_size)]
    results: list[VariantResult] = []
    current: VariantStream | None = None
    with tqdm(total=len(variants) * n, unit="sample", desc="evaluate", disable=bar is False,
              file=None if isinstance(bar, bool) else bar) as progress:
        for job, b in zip(jobs, _checked(map_batches(jobs), len(jobs))):
            if current is None:
                current = VariantStream(job.variant, plan)
                progress.set_postfix_str(job.variant.variant.name)
            current.add(b)
            progress.update(b.count)
            if job.start + batch_size >= n:
                results.append(current.result(suite))
                current = None
    return results


def _checked(batches: Iterable[BatchStats], expected: int) -> Iterator[BatchStats]:
    got = 0
    for b in batches:
        got += 1
        yield b
    if got != expected:
        raise RuntimeError(f"{got} of {expected} batches came back")
