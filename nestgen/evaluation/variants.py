"""Decode variants (schedule x cache policy x guidance), prepared once to decode and count.

Every variant decodes the same requests: sample i has label labels[i], seed `seed + i` and,
for frame prediction, the conditioning tokens cond[i]. Samples are therefore comparable
across variants and identical however the work is split into batches or workers. Each
worker is a `DecodeWorker` (nestgen.decoding.worker) that warms every decode shape up
before timing it, and replays CUDA graphs on a GPU.

A variant is prepared once per evaluation (`prepare_variant`): its schedule string parsed,
its decode planned, and its GFLOPs counted on that plan. Its batches carry the prepared
decode to the workers, which decode exactly that plan, so the FLOPs reported are those of
the decode that ran.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import torch

from nestgen.config import NestgenConfig
from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.plan import PreparedDecode, prepare_schedule
from nestgen.decoding.schedule import resolve_schedule
from nestgen.decoding.worker import DecodeWorker
from nestgen.evaluation.config import EvaluateConfig
from nestgen.flops import plan_flops


@dataclass(frozen=True)
class Variant:
    schedule: str
    cache: str = "none"
    guidance_scale: float = 0.0
    searched: bool = False        # the schedule search's choice (evaluated with the others)

    @property
    def label(self) -> str:
        return "searched" if self.searched else ""

    @property
    def name(self) -> str:
        g = f" g{self.guidance_scale:g}" if self.guidance_scale else ""
        return f"{self.label + ': ' if self.label else ''}{self.schedule} cache={self.cache}{g}"


@dataclass
class VariantResult:
    variant: Variant
    schedule: str                 # the resolved compact schedule
    gflops_per_sample: float
    seconds_per_sample: float     # decode time on one worker, per sample (tokenizer excluded)
    metrics: dict[str, float] = field(default_factory=dict)
    grid: np.ndarray | None = None                                     # pixels of the first grid_samples
    replicates: dict[str, np.ndarray] = field(default_factory=dict)   # metric -> bootstrap replicate values
    # the Fréchet values at the real-data row's count, when it has fewer rows than the samples
    # (nestgen.evaluation.real.Floor)
    at_rows: dict[str, float] = field(default_factory=dict)

    def row(self, baseline_gflops: float) -> dict:
        return {"variant": self.variant.name, "label": self.variant.label, "searched": self.variant.searched,
                "schedule": self.schedule,
                "cache": self.variant.cache, "guidance_scale": self.variant.guidance_scale,
                "gflops_per_sample": self.gflops_per_sample, "seconds_per_sample": self.seconds_per_sample,
                "gflops_saving": baseline_gflops / self.gflops_per_sample, **self.metrics}


def variants_from_config(e: EvaluateConfig) -> list[Variant]:
    """schedules x caches x guidance_scales, in config order (the first is the reference row)."""
    return [Variant(s, c, g) for s, c, g in itertools.product(e.schedules, e.caches, e.guidance_scales)]


@dataclass(frozen=True)
class PreparedVariant:
    """A variant ready to decode: its decode config, the decode prepared from it (schedule
    parsed, steps planned) and the analytic GFLOPs per sample of that plan."""
    variant: Variant
    decode: DecodeConfig
    prep: PreparedDecode
    gflops: float


def prepare_variant(cfg: NestgenConfig, v: Variant) -> PreparedVariant:
    """v on cfg's model, with cfg's sampler settings; its K is its schedule's step count."""
    schedule = resolve_schedule(v.schedule, cfg.model.nest_factors)
    d = replace(cfg.decode, schedule=v.schedule, steps=schedule.steps, cache=v.cache, guidance_scale=v.guidance_scale)
    prep = prepare_schedule(cfg.model, schedule, v.cache, cfg.train.cond_tokens)
    return PreparedVariant(v, d, prep, plan_flops(cfg.model, prep, v.guidance_scale > 0).gflops)


def variant_gflops(cfg: NestgenConfig, v: Variant) -> float:
    return prepare_variant(cfg, v).gflops


def baseline_variant(cfg: NestgenConfig, guidance_scale: float = 0.0) -> Variant:
    """The full model at every step, no cache: what savings are measured against, at the
    guidance scale of the variants it judges (guidance doubles the cost and changes quality)."""
    return Variant(f"1x{cfg.decode.steps}", "none", guidance_scale)


def eval_worker(model, cfg: NestgenConfig, tokenizer=None) -> DecodeWorker:
    """The worker an evaluation decodes with: warmed up per decode shape, CUDA graphs on a GPU."""
    return DecodeWorker(model, cfg.model.grid, tokenizer, cuda_graphs=True, warm_up=True)


@dataclass
class Requests:
    """What every variant is asked for: labels (N,), seeds (N,), optional cond (N, n_cond)
    and, for frame prediction, the tokens of the true clips the conditioning came from
    (rendered to pixels where the samples are scored). `groups`: how many conditioning
    clips the requests cycle through (request i conditions on clip i % groups), which the
    bootstrap resamples whole (StreamPlan.groups); 0: every request stands alone. A batch
    cut by `chunk` has none: the plan, not the batch, groups samples."""
    labels: torch.Tensor
    seeds: Sequence[int]
    cond: torch.Tensor | None = None
    target_tokens: torch.Tensor | None = None
    groups: int = 0

    def __len__(self) -> int:
        return len(self.seeds)

    def chunk(self, start: int, stop: int) -> "Requests":
        return Requests(self.labels[start:stop], self.seeds[start:stop],
                        None if self.cond is None else self.cond[start:stop],
                        None if self.target_tokens is None else self.target_tokens[start:stop])


def class_requests(num_classes: int, n: int, seed: int) -> Requests:
    """Class-balanced labels (classes cycled; the null class when unconditional)."""
    labels = torch.arange(n) % num_classes if num_classes else torch.zeros(n, dtype=torch.long)
    return Requests(labels, range(seed, seed + n))
