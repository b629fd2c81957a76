"""Step metrics averaged over a logging window, each over the steps that reported it.

With `sizes_per_step: sample:k` a nested size runs on only some steps, so its loss must be
divided by the number of steps it ran, not by the window's length (that would report a
size that ran on a third of the steps at a third of its loss).
"""
from __future__ import annotations


class MetricWindow:
    def __init__(self) -> None:
        self.steps = 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: dict) -> None:
        """One step's metrics (tensors or numbers)."""
        self.steps += 1
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._counts[k] = self._counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: s / self._counts[k] for k, s in self._sums.items()}

    def reset(self) -> None:
        self.steps, self._sums, self._counts = 0, {}, {}
