"""Schedule search under a GFLOPs budget (beyond the paper, which hand-picks schedules).

Candidates: every split of K decoding steps over the nest factors in small-to-large order
(the MaGNeTS order; a size may get zero steps) x the configured cache policies, for each K
in search.steps. Their GFLOPs are analytic, so the budget filter is free. Scoring a
candidate costs samples, so at most `max_candidates` are scored: for each (number of
full-model steps, cache policy) the in-budget candidate that spends the most compute, the
groups taken from the most to the least compute. The full-model steps dominate both cost
and quality, so this spreads the scored set over the shapes that matter. The chosen
schedule is then evaluated with every other variant.

Held out from the final evaluation: the search scores on requests the final evaluation
never sends, seeds disjoint from its seeds and, for frame prediction, conditioning clips
disjoint from its clips (`split_held_out`). Choosing on the evaluation's own requests would
favour a schedule that happens to suit those clips, and its interval would not say so.

Like with like: the search decodes at the served guidance scale (decode.guidance_scale), its
budget is a share of the full model's GFLOPs at that scale, and the chosen schedule is
evaluated at that scale, so it is judged against the baseline with the same guidance (the
temperature and, for frame prediction, the conditioning are the same for every variant).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from nestgen.config import NestgenConfig
from nestgen.evaluation.config import EvaluateConfig, SearchConfig
from nestgen.decoding.schedule import Schedule
from nestgen.evaluation.data import EvalData
from nestgen.evaluation.variants import (PreparedVariant, Variant, VariantResult, baseline_variant, prepare_variant,
                                         variant_gflops)


def step_splits(factors: list[int], steps: int) -> list[str]:
    """Every schedule of `steps` steps that visits `factors` from smallest model to largest."""
    order = sorted(factors, reverse=True)            # factor 8 = the smallest model first

    def rec(i: int, left: int) -> list[list[tuple[int, int]]]:
        if i == len(order) - 1:
            return [[(order[i], left)]]
        return [[(order[i], k)] + rest for k in range(left + 1) for rest in rec(i + 1, left - k)]
    return [str(Schedule(tuple((f, k) for f, k in split if k))) for split in rec(0, steps)]


@dataclass
class SearchResult:
    budget_gflops: float
    baseline_gflops: float
    candidates_total: int
    candidates_in_budget: int
    scored: list[VariantResult]
    chosen: Variant
    metric: str

    def summary(self) -> dict:
        return {"budget_gflops": self.budget_gflops, "baseline_gflops": self.baseline_gflops,
                "candidates_total": self.candidates_total, "candidates_in_budget": self.candidates_in_budget,
                "metric": self.metric, "chosen": {"schedule": self.chosen.schedule, "cache": self.chosen.cache},
                "scored": [r.row(self.baseline_gflops) for r in self.scored]}


def split_held_out(cfg: NestgenConfig, e: EvaluateConfig, data: EvalData) -> tuple[EvalData, EvalData]:
    """(the search's held-out data, the final evaluation's). Frame prediction conditions on
    held-out clips: with a search they are split in a fixed random order (evaluate.seed),
    the search taking clips in proportion to its share of the samples (100 of 300 samples:
    a third of the clips), at least one, and leaving the final evaluation at least two (its
    bootstrap resamples clips). Refuses search seeds that overlap the final evaluation's."""
    s = e.search
    if not s.enabled:
        return data, data
    if s.seed < e.seed + e.num_samples and e.seed < s.seed + s.num_samples:
        raise ValueError(f"evaluate.search.seed: the search's seeds [{s.seed}, {s.seed + s.num_samples}) overlap "
                         f"the final evaluation's [{e.seed}, {e.seed + e.num_samples}): the search must be held out")
    if not cfg.train.cond_tokens:
        return data, data
    clips = len(data.holdout_tokens)
    if clips < 3:
        raise ValueError(f"{clips} held-out clips: the schedule search and the final evaluation need disjoint "
                         f"conditioning clips (>= 1 and >= 2); add held-out clips or set evaluate.search.enabled false")
    k = min(max(1, round(clips * s.num_samples / (s.num_samples + e.num_samples))), clips - 2)
    order = torch.randperm(clips, generator=torch.Generator().manual_seed(e.seed))

    def part(idx: torch.Tensor) -> EvalData:
        idx = idx.sort().values
        return replace(data, holdout_tokens=data.holdout_tokens[idx], holdout_labels=data.holdout_labels[idx])
    return part(order[:k]), part(order[k:])


def pick_candidates(cfg: NestgenConfig, s: SearchConfig, budget: float, guidance_scale: float = 0.0
                    ) -> tuple[list[PreparedVariant], int, int]:
    """(the candidates to score, prepared, all candidates, in budget), at `guidance_scale`."""
    full = min(cfg.model.nest_factors)
    every, fits, best = 0, 0, {}
    for k in s.steps:
        for sched in step_splits(cfg.model.nest_factors, k):
            for cache in s.caches:
                v = prepare_variant(cfg, Variant(sched, cache, guidance_scale))
                every += 1
                if v.gflops > budget:
                    continue
                fits += 1
                key = (k, sum(n for f, n in v.prep.schedule.segments if f == full), cache)
                if key not in best or v.gflops > best[key].gflops:
                    best[key] = v
    ranked = sorted(best.values(), key=lambda v: -v.gflops)
    return ranked[:s.max_candidates], every, fits


def search_schedule(cfg: NestgenConfig, s: SearchConfig,
                    score: Callable[[list[PreparedVariant]], list[VariantResult]],
                    metric: str, lower_is_better: bool = True) -> SearchResult:
    """`score(variants)` samples and scores variants on the search's held-out seeds."""
    g = cfg.decode.guidance_scale
    base = variant_gflops(cfg, baseline_variant(cfg, g))
    budget = s.budget_gflops or s.budget_fraction * base
    picked, total, fits = pick_candidates(cfg, s, budget, g)
    if not picked:
        raise ValueError(f"no schedule of {s.steps} steps fits {budget:.4g} GFLOPs per sample "
                         f"(the cheapest needs more); raise evaluate.search.budget_*")
    scored = score(picked)
    sign = 1 if lower_is_better else -1
    best = min(scored, key=lambda r: (sign * r.metrics[metric], r.gflops_per_sample))
    return SearchResult(budget, base, total, fits, scored,
                        Variant(best.variant.schedule, best.variant.cache, g, searched=True), metric)
