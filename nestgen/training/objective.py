"""The nested masked-token objective with online distillation (docs/method.md, "Training objective").

  L = CE(full) + sum_m [ lambda CE(m) + (1 - lambda) CE(m, stopgrad(softmax(full))) ]

computed on one masked batch for every nested size (or a sampled subset), in one backward.

With `loss_chunk` > 0 the head and both CEs run over chunks of that many masked tokens
under activation checkpointing: the (masked tokens x vocabulary) fp32 logits of a size,
and the teacher's softmax, then exist for one chunk at a time, in forward and backward,
instead of for the whole batch (the same loss and gradients, one extra head matmul).

With decode-aware weights (nestgen.training.decode_aware) each smaller size's CE and
distillation terms are weighted means over the masked tokens, each token weighted by its
sample's mask ratio, instead of plain means.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nestgen.masking import random_training_mask
from nestgen.training.config import TrainConfig
from nestgen.training.decode_aware import DecodeAwareWeights


def distill_lambda(cfg: TrainConfig, step: int) -> float:
    """Weight of the ground-truth CE for the smaller sizes; 1 - lambda goes to distillation."""
    d = cfg.distill
    if d.schedule == "off":
        return 1.0
    if d.schedule == "fixed":
        return d.value
    return max(0.0, 1.0 - step / max(1, cfg.steps - 1))


def sizes_for_step(nest_factors: list[int], sample_k: int | None, rng: random.Random) -> list[int]:
    """Full model (factor 1) always, then all smaller sizes or k of them sampled."""
    small = sorted(f for f in nest_factors if f != 1)
    if sample_k is not None and sample_k < len(small):
        small = sorted(rng.sample(small, sample_k))
    return [1] + small


def drop_labels(labels: torch.Tensor, null_class: int, p: float, generator=None) -> torch.Tensor:
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


@dataclass
class LossOutput:
    total: torch.Tensor
    per_size: dict[int, torch.Tensor]   # CE against ground truth per nest factor (detached)
    lam: float


def nested_loss(model, tokens: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, step: int,
                factors: list[int], generator: torch.Generator | None = None,
                weights: DecodeAwareWeights | None = None) -> LossOutput:
    mcfg = model.cfg
    b, n = tokens.shape
    mask = random_training_mask(b, n, cfg.cond_tokens, generator, tokens.device)
    inputs = torch.where(mask, torch.full_like(tokens, mcfg.mask_id), tokens)
    labels = drop_labels(labels, mcfg.null_class, cfg.class_dropout, generator)
    target = tokens[mask]
    lam = distill_lambda(cfg, step)
    # (smaller sizes, masked tokens): each token weighted by its sample's mask ratio; None: plain means
    token_w = _token_weights(weights, factors[1:], mask, cfg.cond_tokens)

    if cfg.loss_chunk > 0:
        feats = [model.features(inputs, labels, f)[mask] for f in factors]
        sums = [torch.zeros((), device=tokens.device) for _ in range(3)]
        for i in range(0, target.shape[0], cfg.loss_chunk):
            w = None if token_w is None else token_w[:, i:i + cfg.loss_chunk]
            part = checkpoint(_chunk_ce_sums, model, [x[i:i + cfg.loss_chunk] for x in feats],
                              target[i:i + cfg.loss_chunk], cfg.label_smoothing, lam < 1.0, w,
                              use_reentrant=False)
            sums = [a + b for a, b in zip(sums, part)]
    else:
        logits = [model(inputs, labels, f)[mask].float() for f in factors]
        sums = _ce_sums(logits, target, cfg.label_smoothing, lam < 1.0, token_w)
    norm = _norm(token_w, target)
    full_ce, small_ce, distill = sums[0] / target.shape[0], sums[1] / norm, sums[2] / norm
    per_size = {1: full_ce.detach()} | {f: small_ce[j].detach() for j, f in enumerate(factors[1:])}
    total = full_ce + lam * small_ce.sum() + (1.0 - lam) * distill.sum()
    return LossOutput(total, per_size, lam)


def _token_weights(weights: DecodeAwareWeights | None, small: list[int], mask: torch.Tensor,
                   cond_tokens: int) -> torch.Tensor | None:
    if weights is None or not small:
        return None
    ratio = mask[:, cond_tokens:].sum(1) / (mask.shape[1] - cond_tokens)
    rows = mask.nonzero()[:, 0]                       # the sample of each masked token, in tokens[mask] order
    per_sample = [weights(f, ratio) for f in small]
    ones = torch.ones_like(ratio, dtype=torch.float32)
    return torch.stack([(ones if w is None else w)[rows] for w in per_sample])


def _norm(token_w: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor | int:
    """What each smaller size's summed terms are divided by: its token count, or its weights' sum
    (a batch without a single token in a size's band gives that size no loss, not a 0/0)."""
    return target.shape[0] if token_w is None else token_w.sum(1).clamp_min(1e-6)


def _ce_sums(logits: list[torch.Tensor], target: torch.Tensor, smoothing: float, distill: bool,
             token_w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over tokens of CE(full), CE(m) and CE(m, stopgrad(softmax(full))) for every smaller
    size m (weighted by `token_w`'s row for m when given), from fp32 logits (full first) of the
    same masked tokens."""
    full_ce = F.cross_entropy(logits[0], target, label_smoothing=smoothing, reduction="sum")
    small = logits[1:]
    zero = full_ce.new_zeros(len(small))
    if not small:
        return full_ce, zero, zero

    def summed(per_token: list[torch.Tensor]) -> torch.Tensor:
        if token_w is None:
            return torch.stack([x.sum() for x in per_token])
        return torch.stack([(x * w).sum() for x, w in zip(per_token, token_w)])

    small_ce = summed([F.cross_entropy(x, target, label_smoothing=smoothing, reduction="none") for x in small])
    if not distill:
        return full_ce, small_ce, zero
    teacher = logits[0].detach().softmax(-1)
    return full_ce, small_ce, summed([F.cross_entropy(x, teacher, reduction="none") for x in small])


def _chunk_ce_sums(model, feats: list[torch.Tensor], target: torch.Tensor, smoothing: float,
                   distill: bool, token_w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _ce_sums([model.logits(x).float() for x in feats], target, smoothing, distill, token_w)


class NestedObjective(torch.nn.Module):
    """The whole nested loss as one module: a data-parallel wrapper (DDP) then sees one
    forward per backward although every nested size runs inside it."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, weights: DecodeAwareWeights | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.weights = weights

    def forward(self, tokens, labels, step: int, factors: list[int], generator=None):
        out = nested_loss(self.model, tokens, labels, self.cfg, step, factors, generator, self.weights)
        return out.total, torch.stack([out.per_size[f] for f in factors]), out.lam
