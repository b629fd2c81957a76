"""The `real data` row: held-out real rows scored exactly like a variant's samples, and the
floor it sets under a baseline.

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

Rows are never repeated (a repeated row adds no information, and the bootstrap would count
it as new), so the row takes as many rows as a variant has samples when the held-out split
has them, else all of it (the digits: 180 images against 2000 samples), and reports its
values at its own count. A Fréchet distance grows as samples get fewer, so such a floor is
compared with the baseline at *matched counts* (`Floor`): each variant's Fréchet values are
also read at the row's count from the chunk sums the evaluation keeps anyway
(nestgen.evaluation.stream, `VariantResult.at_rows`). The floor's share of the baseline is
the row's value over the baseline's at that count, and the baseline's excess over the floor
is taken there too; carried to the variants' count, the floor is the baseline's score there
less that excess, i.e. real data is assumed to lose to fewer samples what the baseline
loses, measured on the baseline's own samples at both counts. The floor is not comparable,
and the claim check reads the plain change saying why, where the baseline cannot be read at
the rows' count, where real data scores no better than the baseline at that count (the rows
set no floor under it: on `make demo` the generator's samples are closer to the training
split, the reference, than held-out digits are), or where the carried floor would be
negative (the count costs real data more than the baseline: the assumption visibly fails).
The same holds at equal counts: a floor at or above the baseline leaves it no excess to lose. (A line in 1/n through the row's own nested subsets,
extrapolated to the variants' count, was used before: with rows only 1.4 to 2.8 times the
64 feature dimensions the distance is not linear in 1/n, and on `make demo` the line put
the floor at -280.6 from 36.1 on the rows.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nestgen.evaluation.config import EvaluateConfig
from nestgen.evaluation.data import EvalData
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.stream import StreamPlan, VariantStream, reduce_batch
from nestgen.evaluation.variants import VariantResult


@dataclass
class RealDataResult:
    name: str                              # real data | real data (tokenizer)
    source: str                            # the split the rows came from
    num_samples: int                       # rows scored, each once
    metrics: dict[str, float]              # on the rows, at their own count
    replicates: dict[str, np.ndarray]      # metric -> bootstrap replicate values


@dataclass(frozen=True)
class Floor:
    """The real-data floor under one baseline, on one Fréchet (or other lower-is-better) value."""
    measured: float             # the real rows' value, at their own count
    rows: int
    baseline_at_rows: float | None    # the baseline's value at the rows' count (None: unreadable)
    value: float | None         # the floor at the variants' count; None: not comparable there
    reason: str = ""            # why not

    @property
    def share(self) -> float | None:
        """The floor's share of the baseline at matched counts (None when the baseline could
        not be read at the rows' count), also where the floor is not comparable."""
        if not self.baseline_at_rows or self.baseline_at_rows < 0:
            return None
        return self.measured / self.baseline_at_rows

    def comparison(self, samples: int) -> str:
        """How it compares with a baseline of `samples` samples, for the progress log."""
        if self.rows >= samples:
            return ""
        at = "" if self.baseline_at_rows is None else f"; the baseline at {self.rows} samples: {self.baseline_at_rows:.4g}"
        return at + (f"; the floor at {samples} samples: {self.value:.4g}" if self.value is not None
                     else f"; not comparable at {samples} samples: {self.reason}")


def real_row_count(e: EvaluateConfig, suite: QualitySuite, data: EvalData) -> int:
    """How many held-out rows the real-data row scores (0: none)."""
    if not data.has_real_rows or suite.render is None:
        return 0
    n = min(e.num_samples, len(data.holdout_tokens))
    return n if n >= 2 else 0


def score_real_data(e: EvaluateConfig, suite: QualitySuite, data: EvalData) -> RealDataResult | None:
    """The held-out rows scored by the suite, `evaluate.batch_size` at a time on the driver
    (None when there are none disjoint from the reference)."""
    n = real_row_count(e, suite, data)
    if not n:
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


def floor_against(real: RealDataResult, metric: str, base: VariantResult, samples: int) -> Floor:
    """The floor `real` sets under `base` (scored on `samples` samples) on `metric`: at
    matched counts (see the module doc)."""
    measured, q, rows = real.metrics[metric], base.metrics[metric], real.num_samples
    if rows >= samples:
        at_rows = q
    elif metric in base.at_rows:
        at_rows = base.at_rows[metric]
    else:
        return Floor(measured, rows, None, None, f"the baseline's {metric} could not be read at the {rows} rows' "
                                                  "count (one bootstrap chunk holds more samples)")
    if not measured < at_rows:
        return Floor(measured, rows, at_rows, None,
                     f"at {rows} samples real data scores {measured:.4g}, not below the baseline's {at_rows:.4g}: "
                     "the held-out rows set no floor under this baseline (its samples are as close to the "
                     "reference as new real images, or closer)")
    value = q - (at_rows - measured)
    if value < 0:
        return Floor(measured, rows, at_rows, None,
                     f"at {rows} samples the baseline scores {at_rows:.4g} and real data {measured:.4g}: "
                     f"an excess of {at_rows - measured:.4g}, more than the baseline's whole {q:.4g} at {samples} "
                     f"samples (fewer samples cost the real rows more than the baseline), so the floor cannot be "
                     f"carried to {samples} samples")
    return Floor(measured, rows, at_rows, value)
