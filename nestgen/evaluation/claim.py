"""The claim check: is a decode variant's quality within a threshold of the baseline's?

The paper's claim is "about 3x fewer GFLOPs at quality within 10% of the full model". A
point estimate cannot carry it, so the verdict reads the interval of the relative quality
change: `yes` when the whole interval is within the threshold, `no` when the whole interval
is beyond it, `undecided` when it straddles the threshold. Only a loss of quality counts
against the claim; a variant better than the baseline is within it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["ClaimCheck", "claim_check"]


@dataclass(frozen=True)
class ClaimCheck:
    gflops_saving: float        # baseline GFLOPs / variant GFLOPs
    change: float               # relative quality change vs the baseline, (q - q_base) / |q_base|
    lo: float                   # its interval
    hi: float
    threshold: float
    lower_is_better: bool
    verdict: str                # yes | no | undecided

    @property
    def line(self) -> str:
        return (f"GFLOPs saving {self.gflops_saving:.2f}x; quality change {100 * self.change:+.1f}% "
                f"[{100 * self.lo:+.1f}, {100 * self.hi:+.1f}]; within {100 * self.threshold:g}%: {self.verdict}")

    def as_dict(self) -> dict:
        return {**asdict(self), "line": self.line}


def claim_check(gflops_saving: float, change: float, lo: float, hi: float, threshold: float = 0.10,
                lower_is_better: bool = True) -> ClaimCheck:
    """The verdict on one variant. `lower_is_better` is the metric's direction (FID: True,
    so a positive change is a loss; accuracy, IS, PSNR: False)."""
    if not lo <= hi:
        raise ValueError(f"interval [{lo}, {hi}] is empty")
    loss_lo, loss_hi = (lo, hi) if lower_is_better else (-hi, -lo)
    verdict = "yes" if loss_hi <= threshold else "no" if loss_lo > threshold else "undecided"
    return ClaimCheck(gflops_saving, change, lo, hi, threshold, lower_is_better, verdict)
