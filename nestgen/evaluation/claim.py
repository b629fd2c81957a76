"""The claim check: is a decode variant's quality within a threshold of the baseline's?

The paper's claim is "about 3x fewer GFLOPs at quality within 10% of the full model". A
point estimate cannot carry it, so the verdict reads the interval of the relative quality
change: `yes` when the whole interval is within the threshold, `no` when the whole interval
is beyond it, `undecided` when it straddles the threshold. Only a loss of quality counts
against the claim; a variant better than the baseline is within it.

Two readings of "within 10%". A distance such as fd_digits is not 0 for real data: real
images that the reference does not contain score a *floor* (the evaluation's `real data`
row). When the floor is a large share of the baseline's score, a variant twice as far from
real data as the baseline can still be within 10% of the baseline's number, so the plain
change measures the reference set more than the method. Above `FLOOR_SHARE` the verdict
therefore reads the change of the *excess over the floor*, (q - q_base) / (q_base - floor),
with the paired interval of the variant and the baseline (the floor held fixed, like the
reference); both readings are always reported. A floor measured on fewer real rows than a
variant's samples is compared at matched counts (nestgen.evaluation.real.Floor); where it
cannot be carried to the variants' count, the verdict reads the plain change and the claim
line says why.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from nestgen.metrics.intervals import Interval

__all__ = ["ClaimCheck", "claim_check", "excess_change", "FLOOR_SHARE"]

# A floor above this share of the baseline's score: the verdict reads the excess over the
# floor (the goal is a metric whose floor is at most a quarter of the baseline).
FLOOR_SHARE = 0.25


@dataclass(frozen=True)
class ClaimCheck:
    gflops_saving: float        # baseline GFLOPs / variant GFLOPs
    change: float               # relative quality change vs the baseline, (q - q_base) / |q_base|
    lo: float                   # its interval
    hi: float
    threshold: float
    lower_is_better: bool
    verdict: str                # yes | no | undecided
    reading: str = "change"     # what the verdict read: change | excess
    floor_share: float | None = None    # the real-data floor / the baseline's score (None: no floor)
    excess: float | None = None         # the change of the excess over the floor and its interval
    excess_lo: float | None = None
    excess_hi: float | None = None
    floor_note: str = ""                # why a real-data floor was not comparable (the change was read)

    @property
    def line(self) -> str:
        text = (f"GFLOPs saving {self.gflops_saving:.2f}x; quality change {100 * self.change:+.1f}% "
                f"[{100 * self.lo:+.1f}, {100 * self.hi:+.1f}]")
        if self.floor_share is not None and self.excess is not None:
            text += (f"; excess over the real-data floor ({100 * self.floor_share:.0f}% of the baseline) "
                     f"{100 * self.excess:+.1f}% [{100 * self.excess_lo:+.1f}, {100 * self.excess_hi:+.1f}]; "
                     f"judged on the {self.reading}")
        elif self.floor_note:
            text += f"; real-data floor not comparable ({self.floor_note}): judged on the change"
        return text + f"; within {100 * self.threshold:g}%: {self.verdict}"

    def as_dict(self) -> dict:
        # an unbounded excess interval (inf) is written as None: JSON has no infinity
        d = {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}
        return {**d, "line": self.line}


def _verdict(lo: float, hi: float, threshold: float, lower_is_better: bool) -> str:
    loss_lo, loss_hi = (lo, hi) if lower_is_better else (-hi, -lo)
    return "yes" if loss_hi <= threshold else "no" if loss_lo > threshold else "undecided"


def claim_check(gflops_saving: float, change: float, lo: float, hi: float, threshold: float = 0.10,
                lower_is_better: bool = True, floor_share: float | None = None,
                excess: Interval | None = None, floor_note: str = "") -> ClaimCheck:
    """The verdict on one variant. `lower_is_better` is the metric's direction (FID: True,
    so a positive change is a loss; accuracy, IS, PSNR: False). `floor_share`: the real-data
    floor as a share of the baseline's score (None: no floor); `excess`: the change of the
    excess over that floor (excess_change). Above FLOOR_SHARE the verdict reads the excess.
    `floor_note`: why a floor exists but is not comparable (then neither share nor excess)."""
    if not lo <= hi:
        raise ValueError(f"interval [{lo}, {hi}] is empty")
    if floor_share is None or floor_share <= FLOOR_SHARE or excess is None:
        verdict, reading = _verdict(lo, hi, threshold, lower_is_better), "change"
    else:
        verdict, reading = _verdict(excess.lo, excess.hi, threshold, lower_is_better), "excess"
    e = (None, None, None) if excess is None else (excess.value, excess.lo, excess.hi)
    return ClaimCheck(gflops_saving, change, lo, hi, threshold, lower_is_better, verdict, reading, floor_share, *e,
                      floor_note)


def excess_change(value: float, base: float, floor: float, replicates, base_replicates,
                  level: float = 0.95) -> Interval:
    """The relative change of the distance *above the floor*, (e - e_base) / e_base with
    e = max(q - floor, 0) (a score below the floor is as close to the reference as real data
    gets: no excess), and its percentile interval over the paired bootstrap replicates of the
    variant and the baseline. The floor is held fixed, like the reference statistics: it is
    one number per evaluation, shared by every variant, with its own interval in the
    real-data row (a bootstrap of a Fréchet distance over a few hundred rows is far wider
    than its sampling noise, duplicated rows inflating it). Where the baseline has no excess
    the change is 0 if the variant has none either, else unbounded (+-inf); the interval's
    quantiles are taken from the replicate values themselves (no interpolation towards
    infinity)."""
    v, b = np.asarray(replicates, np.float64), np.asarray(base_replicates, np.float64)
    if v.shape != b.shape:
        raise ValueError(f"replicates are not paired: {v.shape} vs {b.shape}")

    def ratio(q, qb):
        e, eb = np.maximum(np.asarray(q) - floor, 0.0), np.maximum(np.asarray(qb) - floor, 0.0)
        num = e - eb
        return np.where(eb > 0, num / np.where(eb > 0, eb, 1.0), np.where(num == 0, 0.0, np.copysign(np.inf, num)))
    a = (1 - level) / 2
    lo, hi = np.quantile(ratio(v, b), [a, 1 - a], method="inverted_cdf")
    return Interval(float(ratio(value, base)), float(lo), float(hi), level, int(len(v)))
