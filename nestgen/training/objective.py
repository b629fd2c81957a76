"""The nested masked-token objective with online distillation (docs/method.md, "Training objective").

  L = CE(full) + sum_m [ lambda CE(m) + (1 - lambda) CE(m, stopgrad(softmax(full))) ]

computed on one masked batch for every nested size (or a sampled subset), in one backward.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nestgen.masking import random_training_mask
from nestgen.training.config import TrainConfig


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
                factors: list[int], generator: torch.Generator | None = None) -> LossOutput:
    mcfg = model.cfg
    b, n = tokens.shape
    mask = random_training_mask(b, n, cfg.cond_tokens, generator, tokens.device)
    inputs = torch.where(mask, torch.full_like(tokens, mcfg.mask_id), tokens)
    labels = drop_labels(labels, mcfg.null_class, cfg.class_dropout, generator)
    target = tokens[mask]
    lam = distill_lambda(cfg, step)

    full_logits = model(inputs, labels, 1)[mask].float()
    total = F.cross_entropy(full_logits, target, label_smoothing=cfg.label_smoothing)
    per_size = {1: total.detach()}
    teacher = full_logits.detach().softmax(-1)
    for f in factors:
        if f == 1:
            continue
        logits = model(inputs, labels, f)[mask].float()
        ce = F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)
        per_size[f] = ce.detach()
        loss = lam * ce
        if lam < 1.0:
            loss = loss + (1.0 - lam) * F.cross_entropy(logits, teacher)
        total = total + loss
    return LossOutput(total, per_size, lam)


class NestedObjective(torch.nn.Module):
    """The whole nested loss as one module: a data-parallel wrapper (DDP) then sees one
    forward per backward although every nested size runs inside it."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, tokens, labels, step: int, factors: list[int], generator=None):
        out = nested_loss(self.model, tokens, labels, self.cfg, step, factors, generator)
        return out.total, torch.stack([out.per_size[f] for f in factors]), out.lam
