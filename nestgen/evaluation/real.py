"""The `real data` row: held-out real rows scored exactly like a variant's samples.

A Fréchet distance is not 0 for real data: a finite set of real images that the reference
does not contain sits at some distance from it, set by the number of rows and by how the
feature net treats images it was not trained on. That distance is the metric's *floor*: no
generator is expected below it, and what a schedule can lose is the excess above it
(nestgen.evaluation.claim). So every evaluation scores the held-out split (the rows the
reference leaves out, nestgen.evaluation.data) through the same renderer and the same
metrics, with a bootstrap interval drawn like a variant's.

The row takes as many rows as a variant has samples when the held-out split has them, else
all of it (the digits' held-out split is 180 images against 2000 samples): a Fréchet
distance grows as samples get fewer, so a floor from fewer rows is an upper estimate of the
floor at the variants' count, and the excess reading built on it is the stricter one. Rows
are never repeated to reach the count: a repeated row adds no information, and the
bootstrap would count it as independent. For shard sets the renderer is the tokenizer's
decoder, so the row is `real data (tokenizer)`: the floor the generator can at best reach
through its tokenizer. Frame-prediction errors are not scored (a real clip against itself).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nestgen.evaluation.data import EvalData
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.stream import StreamPlan, VariantStream, reduce_batch

if TYPE_CHECKING:  # annotations only: nestgen.config imports this package (its evaluate section)
    from nestgen.config import NestgenConfig


@dataclass
class RealDataResult:
    name: str                              # real data | real data (tokenizer)
    source: str                            # the split the rows came from
    num_samples: int                       # rows scored, each once
    metrics: dict[str, float]
    replicates: dict[str, np.ndarray]      # metric -> bootstrap replicate values


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
    return RealDataResult(data.real_name, data.source, n, metrics, replicates)
