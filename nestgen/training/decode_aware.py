"""Decode-aware nested training: each smaller size learns most from the mask ratios at which
the decode schedules actually run it.

Under `8x3,4x3,2x3,1x3` on 64 tokens, D/8 only ever sees inputs that are >= 95% masked, but
the cosine training masks give it such inputs ~20% of the time. Drawing other masks per size
would need a teacher forward per size for distillation, so instead every size keeps the one
shared masked batch (one forward each, one backward) and its per-sample loss is importance-
weighted towards its decode-time distribution of mask ratios:

    w_f(r) = (1 - beta) + beta * q_f(bin(r)) / p(bin(r))

q_f: the share of size f's decode steps (over the configured schedules, each counted once)
whose input ratio falls in the bin; p: the probability of the bin under the training masks,
r = cos(pi/2 u), u ~ U(0, 1): P(a <= r < b) = 2/pi (acos a - acos b). With beta = 1 the
expected weighted loss is the loss over the decode-time inputs; beta < 1 keeps some weight on
every ratio. Each size's loss is the weighted mean (sum w ce / sum w), so its scale stays a
cross-entropy. The full model is left unweighted: it is the baseline's model at every ratio
and the teacher of the smaller sizes. The weights are elementwise: training FLOPs are unchanged.
"""
from __future__ import annotations

import math

import torch

from nestgen.decoding.schedule import Schedule, resolve_schedule
from nestgen.masking import decode_mask_counts

BINS = 20            # ratio bins: 5% wide, so D/8's >= 95% band is one bin on the digits grid


def training_bin_probabilities(bins: int = BINS) -> torch.Tensor:
    """P(r in bin) for r = cos(pi/2 u), u ~ U(0, 1), bins of equal width on [0, 1]."""
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    return (2 / math.pi) * (torch.arccos(edges[:-1]) - torch.arccos(edges[1:]))


def ratio_bin(ratio: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """The bin index of mask ratios in [0, 1] (1.0 falls in the top bin)."""
    return (ratio * bins).long().clamp(0, bins - 1)


def decode_ratio_shares(schedules: list[Schedule], free_tokens: int, bins: int = BINS) -> dict[int, torch.Tensor]:
    """Per nest factor, the share of its decode-time work in each ratio bin, over all
    `schedules` (each schedule's steps of that factor counted once). Step t takes the masked
    share from r_t down to r_t+1, so it stands for the ratios between the two, spread evenly:
    one schedule's steps then tile [0, 1], and a size's band has no holes between its steps."""
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    counts: dict[int, torch.Tensor] = {}
    for sched in schedules:
        masked = decode_mask_counts(free_tokens, sched.steps)
        for t, f in enumerate(sched.factors()):
            hi, lo = masked[t] / free_tokens, masked[t + 1] / free_tokens
            overlap = (torch.minimum(edges[1:], torch.tensor(hi)) - torch.maximum(edges[:-1], torch.tensor(lo))).clamp_min(0)
            hist = counts.setdefault(f, torch.zeros(bins, dtype=torch.float64))
            hist += overlap / (hi - lo)
    return {f: h / h.sum() for f, h in counts.items()}


class DecodeAwareWeights:
    """Per-sample loss weights of each smaller size, from its mask ratio."""

    def __init__(self, schedules: list[Schedule], free_tokens: int, strength: float, bins: int = BINS):
        self.bins, self.strength = bins, strength
        p = training_bin_probabilities(bins)
        self.table = {f: ((1 - strength) + strength * q / p).float()
                      for f, q in decode_ratio_shares(schedules, free_tokens, bins).items() if f != 1}

    def __call__(self, factor: int, ratio: torch.Tensor) -> torch.Tensor | None:
        """Weights (B,) for samples masked at `ratio` (B,); None: the size is unweighted (the
        full model, or a size no configured schedule runs)."""
        table = self.table.get(factor)
        if table is None:
            return None
        return table.to(ratio.device)[ratio_bin(ratio, self.bins)]


def decode_aware_weights(strength: float, schedules: list[str], nest_factors: list[int],
                         num_tokens: int, cond_tokens: int) -> DecodeAwareWeights | None:
    """The weights for `train.decode_aware` = strength over the named schedules (presets or
    compact strings); None when off. Left out: schedules the model's sizes cannot run, and
    those that do not go from small to large sizes (`large-first` is evaluated as an ablation
    of the method, not served: training for it would spread D/8 over the late steps too)."""
    if strength <= 0:
        return None
    parsed = {}
    for text in schedules:
        try:
            sched = resolve_schedule(text, nest_factors)
        except ValueError:
            continue
        factors = [f for f, _ in sched.segments]
        if factors == sorted(factors, reverse=True):
            parsed[str(sched)] = sched
    return DecodeAwareWeights(list(parsed.values()), num_tokens - cond_tokens, strength)
