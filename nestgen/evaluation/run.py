"""One evaluation: (optional) schedule search, then every variant on the same requests,
scored by the quality suite, summarised against the full-model baseline.

Sampling is injected (`SampleFn`), so the same evaluation runs in one process
(`local_sampler`) or spread over Ray actors (pipelines.evaluate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from nestgen.evaluation.data import EvalData, eval_requests
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.report import pareto_front, results_table
from nestgen.evaluation.search import SearchResult, search_schedule
from nestgen.evaluation.variants import (Requests, Variant, VariantResult, baseline_variant, eval_worker,
                                         sample_variants, variant_gflops, variants_from_config)

if TYPE_CHECKING:  # annotations only: nestgen.config imports this package (its evaluate section)
    from nestgen.config import NestgenConfig

# (variants, requests) -> one result per variant, in order, with tokens and pixels
SampleFn = Callable[[list[Variant], Requests], list[VariantResult]]


@dataclass
class EvaluationReport:
    cfg: NestgenConfig
    results: list[VariantResult]
    suite: QualitySuite
    baseline_gflops: float
    search: SearchResult | None
    checkpoint: str = ""

    @property
    def metric(self) -> str:
        return self.suite.primary

    def baseline(self) -> VariantResult:
        """The full model without cache when it was evaluated, else the first variant."""
        ref = baseline_variant(self.cfg)
        for r in self.results:
            if r.schedule == ref.schedule and r.variant.cache == "none" and not r.variant.searched:
                return r
        return self.results[0]

    def searched(self) -> VariantResult | None:
        """The schedule search's choice, evaluated with the other variants (None without a search)."""
        return next((r for r in self.results if r.variant.searched), None)

    def front(self) -> list[bool]:
        return pareto_front([r.gflops_per_sample for r in self.results],
                            [r.metrics[self.metric] for r in self.results], self.suite.lower_is_better)

    def table(self) -> str:
        return results_table(self.results, self.metric, self.suite.lower_is_better, self.baseline_gflops)

    def summary(self) -> dict:
        base = self.baseline()
        qb = base.metrics[self.metric]
        rows = []
        for r, f in zip(self.results, self.front()):
            row = r.row(self.baseline_gflops)
            row["pareto"] = f
            row["quality_change_vs_baseline"] = (r.metrics[self.metric] - qb) / abs(qb) if qb else None
            rows.append(row)
        e = self.cfg.evaluate
        return {
            "checkpoint": self.checkpoint, "model": {"grid": self.cfg.model.grid, "width": self.cfg.model.width,
                                                     "depth": self.cfg.model.depth,
                                                     "nest_factors": self.cfg.model.nest_factors},
            "num_samples": e.num_samples, "seed": e.seed, "metric": self.metric,
            "lower_is_better": self.suite.lower_is_better, "reference": self.suite.reference,
            "baseline": {"variant": base.variant.name, "gflops_per_sample": base.gflops_per_sample,
                         self.metric: qb, "analytic_full_model_gflops": self.baseline_gflops},
            "variants": rows, "search": self.search.summary() if self.search else None,
            "unavailable_metrics": self.suite.unavailable, "protocols": self.suite.protocols,
        }


def score(results: list[VariantResult], requests: Requests, suite: QualitySuite) -> list[VariantResult]:
    for r in results:
        r.metrics = suite(r, requests)
    return results


def run_evaluation(cfg: NestgenConfig, sample: SampleFn, suite: QualitySuite, data: EvalData,
                   render=None, checkpoint: str = "", progress: Callable[[str], None] = print) -> EvaluationReport:
    e = cfg.evaluate
    variants = variants_from_config(e)
    search = None
    if e.search.enabled:
        req = eval_requests(cfg, data, e.search.num_samples, e.search.seed, render)
        progress(f"schedule search: budget {e.search.budget_gflops or e.search.budget_fraction} "
                 f"({'GFLOPs' if e.search.budget_gflops else 'x the full model'}), {suite.primary} on "
                 f"{e.search.num_samples} held-out seeds")
        search = search_schedule(cfg, lambda vs: score(sample(vs, req), req, suite), suite.primary,
                                 suite.lower_is_better)
        progress(f"searched schedule: {search.chosen.name}")
        variants.append(search.chosen)
    req = eval_requests(cfg, data, e.num_samples, e.seed, render)
    progress(f"evaluating {len(variants)} variants x {e.num_samples} samples")
    results = score(sample(variants, req), req, suite)
    return EvaluationReport(cfg, results, suite, variant_gflops(cfg, baseline_variant(cfg)), search, checkpoint)


def local_sampler(model, cfg: NestgenConfig, tokenizer=None) -> SampleFn:
    worker = eval_worker(model, cfg, tokenizer)
    return lambda variants, requests: sample_variants(worker, cfg, variants, requests, cfg.evaluate.batch_size)
