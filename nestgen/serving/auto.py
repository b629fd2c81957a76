"""Compute-adaptive serving: schedule "auto" picks the best preset that keeps a latency target
under the current queue depth (beyond the paper).

The nested model serves every preset from one set of weights, so under load the service can
trade quality for speed per request instead of letting the queue grow without bound. Presets
are ranked best-quality first (by default the full-size baseline, then the MaGNeTS schedules
with less and less compute); the first whose expected latency holds the target wins, and when
none does, the cheapest.

Latency models, by serve.batching:
- request: one batched decode of r rows with preset p takes fixed_p + per_row_p * r seconds
  (two timed points at replica start). A new request of n rows behind q queued rows waits for
  those rows to run in batches of at most B, then runs itself:
      expected = full_batches * t_p(B) + t_p(rest),  full_batches, rest = divmod(q + n, B)
  This assumes the rows ahead run with the same preset, which is what happens under overload,
  when auto requests dominate the queue.
- step: the step loop measures the speed it sustains, GFLOPs of row-steps per second of tick
  (StepLoop.gflops_per_s: its rows' mix, the machine's load and every pass's fixed cost
  included), and knows the work it owes (StepLoop.pending_gflops: the queued requests' and the
  rest of the running rows'). A new request of n rows with preset p is answered after that work
  and its own: expected = (pending + n * GFLOPs_p) / speed. Before the first tick the speed is
  the calibrated whole-batch decode's (which overstates what a loaded replica sustains).
What the models leave out (HTTP and PNG/MP4 encoding time, batches that fill less than assumed,
rows admitted later sharing the request's ticks) is corrected by feedback: the running ratio of
observed to predicted latency of answered auto requests scales every prediction.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class LatencyModel:
    fixed_s: dict[str, float]         # seconds per decode call, whatever its size
    per_row_s: dict[str, float]       # seconds per row (sample) in that call
    max_batch: int

    def batch_seconds(self, preset: str, rows: int) -> float:
        return self.fixed_s[preset] + self.per_row_s[preset] * rows

    def expected_latency(self, preset: str, queue_rows: int, rows: int) -> float:
        full, rest = divmod(queue_rows + rows, self.max_batch)
        return full * self.batch_seconds(preset, self.max_batch) + (self.batch_seconds(preset, rest) if rest else 0.0)

    def to_dict(self) -> dict:
        return {"fixed_s": self.fixed_s, "per_row_s": self.per_row_s, "max_batch": self.max_batch}


@dataclass
class LatencyFeedback:
    """Exponential moving average of observed / predicted latency (clamped, so one stalled
    request can't swing it far)."""
    ratio: float = 1.0
    alpha: float = 0.2

    def observe(self, predicted_s: float, observed_s: float) -> None:
        if predicted_s > 0:
            r = min(20.0, max(0.25, observed_s / predicted_s))
            self.ratio = (1 - self.alpha) * self.ratio + self.alpha * r


def choose_preset(presets_best_first: list[str], model_latency: Callable[[str], float], target_s: float,
                  correction: float = 1.0, **details) -> tuple[str, dict]:
    """(preset, details): the first preset whose expected latency (model_latency(preset) x
    correction) is within target_s, else the last (cheapest). Details say why, for the
    response (with `details`, e.g. the queue); model_latency_s is the uncorrected prediction,
    which LatencyFeedback compares with what happened."""
    model = {p: model_latency(p) for p in presets_best_first}
    chosen = next((p for p in presets_best_first if model[p] * correction <= target_s), presets_best_first[-1])
    expected = model[chosen] * correction
    return chosen, {**details, "target_s": target_s, "expected_latency_s": round(expected, 4),
                    "model_latency_s": round(model[chosen], 4), "correction": round(correction, 3),
                    "met_target": expected <= target_s}


def calibrate(presets: list[str], time_decode: Callable[[str, int], float], max_batch: int,
              repeats: int = 3) -> LatencyModel:
    """Fit fixed + per-row seconds per preset from timed decodes of 1 and max_batch rows,
    the fastest of `repeats` each after one warm-up of both sizes (`time_decode(preset, rows)`
    runs one decode and returns its seconds)."""
    fixed, per_row = {}, {}
    for p in presets:
        time_decode(p, 1)
        time_decode(p, max_batch)
        t1 = min(time_decode(p, 1) for _ in range(repeats))
        tb = min(time_decode(p, max_batch) for _ in range(repeats)) if max_batch > 1 else t1
        slope = max(0.0, (tb - t1) / (max_batch - 1)) if max_batch > 1 else 0.0
        per_row[p] = slope
        fixed[p] = max(0.0, t1 - slope)
    return LatencyModel(fixed, per_row, max_batch)

