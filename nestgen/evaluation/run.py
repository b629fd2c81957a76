"""One evaluation: (optional) schedule search, then every variant on the same requests,
scored by the quality suite as the samples stream (nestgen.evaluation.stream), summarised
against the full-model baseline: each metric with a bootstrap interval, each variant's
change against the baseline with a paired interval, and the claim check.

Sampling is injected (`SampleFn`), so the same evaluation runs in one process
(`local_sampler`) or spread over Ray actors (pipelines.evaluate).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from nestgen.evaluation.claim import ClaimCheck, claim_check
from nestgen.evaluation.data import EvalData, eval_requests
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.report import pareto_front, results_table
from nestgen.evaluation.search import SearchResult, search_schedule, split_held_out
from nestgen.evaluation.stream import StreamPlan, stream_batch, stream_variants
from nestgen.evaluation.variants import (Requests, Variant, VariantResult, baseline_variant, eval_worker,
                                         variant_gflops, variants_from_config)
from nestgen.metrics.intervals import Interval, paired_change, percentile_interval

if TYPE_CHECKING:  # annotations only: nestgen.config imports this package (its evaluate section)
    from nestgen.config import NestgenConfig

# (variants, requests, plan) -> one scored result per variant, in order
SampleFn = Callable[[list[Variant], Requests, StreamPlan], list[VariantResult]]


@dataclass
class EvaluationReport:
    cfg: NestgenConfig
    results: list[VariantResult]
    suite: QualitySuite
    baseline_gflops: float
    search: SearchResult | None
    checkpoint: str = ""
    plan: StreamPlan | None = None    # the final evaluation's: its bootstrap chunks and groups

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
        return results_table(self.results, self.metric, self.suite.lower_is_better, self.baseline_gflops,
                             {r.variant.name: c for r, c in zip(self.results, self.changes())})

    def interval(self, r: VariantResult, value: str) -> Interval | None:
        """Bootstrap interval of one reported value (None without replicates)."""
        reps = r.replicates.get(value)
        return None if reps is None else percentile_interval(r.metrics[value], reps)

    def change(self, r: VariantResult, value: str) -> Interval | None:
        """Relative change of a value against the baseline with its paired interval (same
        samples, same bootstrap draws); None without replicates or a zero baseline."""
        base = self.baseline()
        if value not in r.replicates or value not in base.replicates or not base.metrics[value]:
            return None
        return paired_change(r.metrics[value], base.metrics[value], r.replicates[value], base.replicates[value])

    def changes(self) -> list[Interval | None]:
        return [self.change(r, self.metric) for r in self.results]

    def claims(self) -> list[ClaimCheck | None]:
        """The claim check of every variant on the primary metric (None without an interval)."""
        e = self.cfg.evaluate
        return [None if c is None else claim_check(self.baseline_gflops / r.gflops_per_sample, c.value, c.lo, c.hi,
                                                   e.claim_threshold, self.suite.lower_is_better)
                for r, c in zip(self.results, self.changes())]

    def claim_lines(self) -> list[str]:
        return [f"{r.variant.name}: {c.line}" for r, c in zip(self.results, self.claims()) if c is not None]

    def summary(self) -> dict:
        base = self.baseline()
        qb = base.metrics[self.metric]
        rows = []
        for r, f, claim in zip(self.results, self.front(), self.claims()):
            row = r.row(self.baseline_gflops)
            row["pareto"] = f
            row["quality_change_vs_baseline"] = (r.metrics[self.metric] - qb) / abs(qb) if qb else None
            row["intervals"] = {}
            for value in r.metrics:
                iv, ch = self.interval(r, value), self.change(r, value)
                if iv is not None:
                    row["intervals"][value] = {"lo": iv.lo, "hi": iv.hi}
                if ch is not None:
                    row["intervals"].setdefault(value, {}).update(change=ch.value, change_lo=ch.lo, change_hi=ch.hi)
            if claim is not None:
                row["quality_change_lo"], row["quality_change_hi"] = claim.lo, claim.hi
                row["claim"] = claim.as_dict()
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
            "intervals": {"level": 0.95, "replicates": e.bootstrap_replicates,
                          "chunks": self.plan.num_chunks if self.plan else None,
                          "groups": self.plan.num_groups if self.plan else None,
                          "method": "percentile bootstrap over chunks of whole groups of samples (a group: the "
                                    "samples conditioned on one held-out clip, else one sample); the change vs the "
                                    "baseline is paired (same labels, seeds and bootstrap draws for every variant)"},
            "claim": {"threshold": e.claim_threshold, "lines": self.claim_lines()},
            "variants": rows, "search": self.search.summary() if self.search else None,
            "unavailable_metrics": self.suite.unavailable, "protocols": self.suite.protocols,
        }


def run_evaluation(cfg: NestgenConfig, sample: SampleFn, suite: QualitySuite, data: EvalData,
                   checkpoint: str = "", progress: Callable[[str], None] = print) -> EvaluationReport:
    e = cfg.evaluate
    variants = variants_from_config(e)
    search = None
    search_data, final_data = split_held_out(cfg, data)
    if e.search.enabled:
        s = e.search
        req = eval_requests(cfg, search_data, s.num_samples, s.seed)
        progress(f"schedule search: budget {s.budget_gflops or s.budget_fraction} "
                 f"({'GFLOPs' if s.budget_gflops else 'x the full model'}), {suite.primary} on "
                 f"{s.num_samples} held-out seeds")
        plan = StreamPlan(s.num_samples, e.interval_chunks, groups=req.groups)
        search = search_schedule(cfg, lambda vs: sample(vs, req, plan), suite.primary, suite.lower_is_better)
        progress(f"searched schedule: {search.chosen.name}")
        variants.append(search.chosen)
    req = eval_requests(cfg, final_data, e.num_samples, e.seed)
    progress(f"evaluating {len(variants)} variants x {e.num_samples} samples")
    plan = StreamPlan(e.num_samples, e.interval_chunks, e.grid_samples, e.bootstrap_replicates, e.seed, req.groups)
    report = EvaluationReport(cfg, sample(variants, req, plan), suite, variant_gflops(cfg, baseline_variant(cfg)),
                              search, checkpoint, plan=plan)
    for line in report.claim_lines():
        progress(f"claim check: {line}")
    return report


def local_sampler(model, cfg: NestgenConfig, suite: QualitySuite, tokenizer=None, progress: bool = True) -> SampleFn:
    """Every batch decoded and reduced in this process, one after another."""
    worker = eval_worker(model, cfg, tokenizer)
    features = suite.features()
    bs = cfg.evaluate.batch_size

    def sample(variants: list[Variant], requests: Requests, plan: StreamPlan) -> list[VariantResult]:
        def run(tasks):
            return (stream_batch(worker, cfg, variants[vi], requests.chunk(start, start + bs), start, plan, features)
                    for vi, start in tasks)
        return stream_variants(cfg, suite, variants, requests, plan, bs, run, progress)
    return sample
