"""Compute-adaptive serving: schedule "auto" picks the best preset that keeps a latency target
under the current queue depth (beyond the paper).

The nested model serves every preset from one set of weights, so under load the service can
trade quality for speed per request instead of letting the queue grow without bound. Presets
are ranked best-quality first (by default the full-size baseline, then the MaGNeTS schedules
with less and less compute); the first whose expected latency holds the target wins, and when
none does, the cheapest.

Latency model: one batched decode of r rows with preset p takes fixed_p + per_row_p * r
seconds (two timed points at replica start). A new request of n rows behind q queued rows
waits for those rows to run in batches of at most B, then runs itself:
    expected = full_batches * t_p(B) + t_p(rest),  full_batches, rest = divmod(q + n, B)
This assumes the rows ahead run with the same preset, which is what happens under overload,
when auto requests dominate the queue.
"""
from __future__ import annotations

import time
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


def choose_preset(presets_best_first: list[str], latency: LatencyModel, queue_rows: int, rows: int,
                  target_s: float) -> tuple[str, dict]:
    """(preset, details): the first preset whose expected latency is within target_s, else the
    last (cheapest). Details say why, for the response."""
    expected = {p: latency.expected_latency(p, queue_rows, rows) for p in presets_best_first}
    chosen = next((p for p in presets_best_first if expected[p] <= target_s), presets_best_first[-1])
    return chosen, {"queue_rows": queue_rows, "target_s": target_s,
                    "expected_latency_s": round(expected[chosen], 4), "met_target": expected[chosen] <= target_s}


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


def timer(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
