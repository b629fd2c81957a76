"""Schedule search under a GFLOPs budget (beyond the paper, which hand-picks schedules).

Candidates: every split of K decoding steps over the nest factors in small-to-large order
(the MaGNeTS order; a size may get zero steps) x the configured cache policies, for each K
in search.steps. Their GFLOPs are analytic, so the budget filter is free. Scoring a
candidate costs samples, so at most `max_candidates` are scored: for each (number of
full-model steps, cache policy) the in-budget candidate that spends the most compute, the
groups taken from the most to the least compute. The full-model steps dominate both cost
and quality, so this spreads the scored set over the shapes that matter. Scoring uses
seeds disjoint from the final evaluation's, and the chosen schedule is then evaluated with
every other variant.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from nestgen.decoding.schedule import Schedule, parse_schedule
from nestgen.evaluation.variants import Variant, VariantResult, baseline_variant, variant_gflops

if TYPE_CHECKING:  # annotations only: nestgen.config imports this package (its evaluate section)
    from nestgen.config import NestgenConfig


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


def pick_candidates(cfg: NestgenConfig, budget: float) -> tuple[list[tuple[Variant, float]], int, int]:
    """(scored candidates with their GFLOPs, all candidates, in budget)."""
    s = cfg.evaluate.search
    full = min(cfg.model.nest_factors)
    every, fits, best = 0, 0, {}
    for k in s.steps:
        for sched in step_splits(cfg.model.nest_factors, k):
            for cache in s.caches:
                v = Variant(sched, cache)
                g = variant_gflops(cfg, v)
                every += 1
                if g > budget:
                    continue
                fits += 1
                key = (k, sum(n for f, n in parse_schedule(sched).segments if f == full), cache)
                if key not in best or g > best[key][1]:
                    best[key] = (v, g)
    ranked = sorted(best.values(), key=lambda vg: -vg[1])
    return ranked[:s.max_candidates], every, fits


def search_schedule(cfg: NestgenConfig, score: Callable[[list[Variant]], list[VariantResult]],
                    metric: str, lower_is_better: bool = True) -> SearchResult:
    """`score(variants)` samples and scores variants on the search's held-out seeds."""
    s = cfg.evaluate.search
    base = variant_gflops(cfg, baseline_variant(cfg))
    budget = s.budget_gflops or s.budget_fraction * base
    picked, total, fits = pick_candidates(cfg, budget)
    if not picked:
        raise ValueError(f"no schedule of {s.steps} steps fits {budget:.4g} GFLOPs per sample "
                         f"(the cheapest needs more); raise evaluate.search.budget_*")
    scored = score([v for v, _ in picked])
    sign = 1 if lower_is_better else -1
    best = min(scored, key=lambda r: (sign * r.metrics[metric], r.gflops_per_sample))
    return SearchResult(budget, base, total, fits, scored,
                        Variant(best.variant.schedule, best.variant.cache, searched=True), metric)
