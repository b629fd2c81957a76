"""The `real data` row: held-out real rows scored exactly like a variant's samples.

A Fréchet distance is not 0 for real data: a finite set of real images that the reference
does not contain sits at some distance from it, set by the number of rows and by how the
feature net treats images it was not trained on. That distance is the metric's *floor*: no
generator is expected below it, and what a schedule can lose is the excess above it
(nestgen.evaluation.claim). So every evaluation scores the held-out split (the rows the
reference leaves out, nestgen.evaluation.data) through the same renderer and the same
metrics, with a bootstrap interval drawn like a variant's. For shard sets the renderer is
the tokenizer's decoder, so the row is `real data (tokenizer)`: the floor the generator can
at best reach through its tokenizer. Frame-prediction errors are not scored (a real clip
against itself).

The same count as a variant. Rows are never repeated (a repeated row adds no information,
and the bootstrap would count it as new), so the row takes as many rows as a variant has
samples when the held-out split has them, else all of it: the digits' held-out split is 180
images against 2000 samples. A Fréchet distance grows as samples get fewer, roughly as
a + b / n (the estimated covariance's error), and at 180 rows the digits floor is about 60%
above its value at 2000 (docs/method.md, section 10). So when the rows are fewer than a
variant's samples, each Fréchet value (`MetricSpec.count_biased`) is read off a least-squares
line in 1/n through the row's value on nested subsets of its chunks (a half, two thirds,
five sixths, all), at the variants' count (the extrapolation of Chong & Forsyth, "Effectively
Unbiased FID", 2020, to a finite count). Its bootstrap replicates are the rows' own, shifted
by the same correction: refitting the line per replicate is unusable (duplicated rows
distort the slope; on the digits the interval spanned -24 to 102), so the interval covers
the rows' sampling noise, not the uncertainty of the slope. The value on the rows themselves
is kept beside it (`measured`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from nestgen.evaluation.data import EvalData
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.stream import StreamPlan, VariantStream, reduce_batch
from nestgen.metrics.sums import weighted

if TYPE_CHECKING:  # annotations only: nestgen.config imports this package (its evaluate section)
    from nestgen.config import NestgenConfig

# shares of the row's chunks the line in 1/n is fitted over: from half the rows up, so that
# on the digits (180 rows, 64-d features) every point has more rows than feature dimensions
PREFIXES = (1 / 2, 2 / 3, 5 / 6, 1.0)


@dataclass
class RealDataResult:
    name: str                              # real data | real data (tokenizer)
    source: str                            # the split the rows came from
    num_samples: int                       # rows scored, each once
    metrics: dict[str, float]              # at the variants' count (count_matched values extrapolated)
    replicates: dict[str, np.ndarray]      # metric -> bootstrap replicate values
    measured: dict[str, float] = field(default_factory=dict)   # count_matched values on the rows themselves
    count_matched: list[str] = field(default_factory=list)     # values read off the line in 1/n


def extrapolate_to_count(counts, values, n: float) -> float:
    """The least-squares line value = a + b / count through the points, at count n."""
    x = 1.0 / np.asarray(counts, np.float64)
    (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), np.asarray(values, np.float64), rcond=None)
    return float(a + b / n)


def score_real_data(cfg: NestgenConfig, suite: QualitySuite, data: EvalData) -> RealDataResult | None:
    """The held-out rows scored by the suite, `evaluate.batch_size` at a time on the driver
    (None when there are none disjoint from the reference)."""
    if not data.has_real_rows or suite.render is None:
        return None
    e = cfg.evaluate
    n = min(e.num_samples, len(data.holdout_tokens))
    if n < 2:
        return None
    plan = StreamPlan(n, e.interval_chunks, replicates=e.bootstrap_replicates, seed=e.seed)
    features = suite.features_without_targets()
    stream = VariantStream(None, plan)
    for start in range(0, n, e.batch_size):
        tokens = data.holdout_tokens[start:min(n, start + e.batch_size)]
        pixels = np.asarray(suite.render(tokens))
        labels = data.holdout_labels[start:start + len(tokens)].numpy()
        rows = reduce_batch(pixels, labels, None, start, plan, features, suite.device)
        stream.rows_from(rows, tuple(pixels.shape[1:]), len(tokens))
    metrics, replicates = stream.values(suite, record=False)
    chunks = StreamPlan(n, e.interval_chunks).num_chunks
    fits = len({max(2, round(f * chunks)) for f in PREFIXES}) >= 3          # a line needs some points
    biased = [v for v in suite.count_biased() if v in metrics] if n < e.num_samples and fits else []
    if not biased:
        return RealDataResult(data.real_name, data.source, n, metrics, replicates)
    at_count = _at_count(stream, suite, plan, e.num_samples, biased)
    shifted = {v: replicates[v] + (at_count[v] - metrics[v]) for v in biased if v in replicates}
    return RealDataResult(data.real_name, data.source, n, {**metrics, **at_count}, {**replicates, **shifted},
                          {v: metrics[v] for v in biased}, biased)


def _at_count(stream: VariantStream, suite: QualitySuite, plan: StreamPlan, count: int,
              values: list[str]) -> dict[str, float]:
    """`values` extrapolated to `count` samples from nested prefixes of the chunks."""
    sizes = np.bincount(plan.chunk_of(np.arange(plan.n)), minlength=plan.num_chunks).astype(np.float64)
    counts, points = [], {v: [] for v in values}
    for k in sorted({max(2, round(f * plan.num_chunks)) for f in PREFIXES}):
        w = (np.arange(plan.num_chunks) < k).astype(np.float64)
        got = suite.finish({name: weighted(rows, w) for name, rows in stream.rows.items()}, stream.sample_shape,
                           record=False)
        counts.append(float(w @ sizes))
        for v in values:
            points[v].append(got[v])
    return {v: extrapolate_to_count(counts, points[v], count) for v in values}
