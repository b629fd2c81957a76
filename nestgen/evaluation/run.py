"""One evaluation: (optional) schedule search, then every variant on the same requests,
scored by the quality suite as the samples stream (nestgen.evaluation.stream), and the
held-out real data scored the same way (the metric's floor, nestgen.evaluation.real);
summarised against the full-model baseline with the same guidance scale: each metric with a
bootstrap interval, each variant's change against its baseline with a paired interval, the
change of the excess over the floor, and the claim check (nestgen.evaluation.claim).

Where the batches run is the caller's `map_batches` (nestgen.evaluation.stream.BatchMap),
so the same evaluation runs in one process (`local_map`: the builtin `map`) or spread over
Ray actors (pipelines.evaluate: an actor pool that redoes the batches of a lost actor).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, TextIO

from nestgen.config import NestgenConfig
from nestgen.evaluation.claim import FLOOR_SHARE, ClaimCheck, claim_check, excess_change
from nestgen.evaluation.config import EvaluateConfig
from nestgen.evaluation.data import EvalData, eval_requests
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.real import Floor, RealDataResult, floor_against, real_row_count, score_real_data
from nestgen.evaluation.report import pareto_front, results_table
from nestgen.evaluation.search import SearchResult, search_schedule, split_held_out
from nestgen.evaluation.stream import BatchMap, StreamPlan, run_batch, stream_variants
from nestgen.evaluation.variants import (VariantResult, baseline_variant, eval_worker, prepare_variant,
                                         variant_gflops, variants_from_config)
from nestgen.metrics.intervals import Interval, paired_change, percentile_interval


@dataclass
class EvaluationReport:
    cfg: NestgenConfig
    evaluate: EvaluateConfig
    results: list[VariantResult]
    suite: QualitySuite
    baseline_gflops: float           # the unguided full model's, analytic
    search: SearchResult | None
    checkpoint: str = ""
    real: RealDataResult | None = None
    plan: StreamPlan | None = None    # the final evaluation's: its bootstrap chunks and groups

    @property
    def metric(self) -> str:
        return self.suite.primary

    def baseline_for(self, r: VariantResult) -> VariantResult | None:
        """What `r` is judged against: the full model without cache at r's guidance scale
        (every variant shares the temperature and, for frame prediction, the conditioning)
        when it was evaluated, else the first variant at that scale in config order; None
        when no other variant was evaluated at that scale: then nothing is compared."""
        g = r.variant.guidance_scale
        same = [x for x in self.results if x.variant.guidance_scale == g and not x.variant.searched]
        full = baseline_variant(self.cfg, g).schedule
        return next((x for x in same if x.schedule == full and x.variant.cache == "none"), same[0] if same else None)

    def baseline(self) -> VariantResult:
        """The baseline of the first guidance scale (the summary's headline row)."""
        return self.baseline_for(self.results[0]) or self.results[0]

    def full_model_gflops(self, r: VariantResult) -> float:
        """Analytic GFLOPs per sample of the full model at r's guidance scale."""
        return variant_gflops(self.cfg, baseline_variant(self.cfg, r.variant.guidance_scale))

    def gflops_saving(self, r: VariantResult) -> float:
        return self.full_model_gflops(r) / r.gflops_per_sample

    def searched(self) -> VariantResult | None:
        """The schedule search's choice, evaluated with the other variants (None without a search)."""
        return next((r for r in self.results if r.variant.searched), None)

    def front(self) -> list[bool]:
        return pareto_front([r.gflops_per_sample for r in self.results],
                            [r.metrics[self.metric] for r in self.results], self.suite.lower_is_better)

    def table(self) -> str:
        return results_table(self.results, self.metric, self.suite.lower_is_better,
                             [self.gflops_saving(r) for r in self.results],
                             {r.variant.name: c for r, c in zip(self.results, self.changes())},
                             {r.variant.name: self.excess(r) for r in self.results}, self.real,
                             floor.comparison(self.evaluate.num_samples)
                             if (floor := self.floor(self.baseline())) is not None else "")

    def interval(self, r: VariantResult, value: str) -> Interval | None:
        """Bootstrap interval of one reported value (None without replicates)."""
        reps = r.replicates.get(value)
        return None if reps is None else percentile_interval(r.metrics[value], reps)

    def change(self, r: VariantResult, value: str) -> Interval | None:
        """Relative change of a value against r's baseline with its paired interval (same
        samples, same bootstrap draws); None without replicates, a baseline or a zero baseline."""
        base = self.baseline_for(r)
        if base is None or value not in r.replicates or value not in base.replicates or not base.metrics[value]:
            return None
        return paired_change(r.metrics[value], base.metrics[value], r.replicates[value], base.replicates[value])

    def changes(self) -> list[Interval | None]:
        return [self.change(r, self.metric) for r in self.results]

    def floor(self, r: VariantResult) -> Floor | None:
        """The real-data floor under r's baseline on the primary metric, at matched counts
        (nestgen.evaluation.real; None without a real-data row or a baseline, or for a
        higher-is-better metric, which has no floor to subtract)."""
        base = self.baseline_for(r)
        if self.real is None or base is None or not self.suite.lower_is_better or self.metric not in self.real.metrics:
            return None
        return floor_against(self.real, self.metric, base, self.evaluate.num_samples)

    def floor_share(self, r: VariantResult) -> float | None:
        """The floor as a share of r's baseline's score, at the real rows' count (None when
        there is no floor or it is not comparable)."""
        f = self.floor(r)
        return None if f is None or f.value is None else f.share

    def excess(self, r: VariantResult) -> Interval | None:
        """The change of the primary metric's excess over the floor (carried to the variants'
        count) against r's baseline, with the paired interval (None without a comparable
        floor or replicates)."""
        base, floor, m = self.baseline_for(r), self.floor(r), self.metric
        if base is None or floor is None or floor.value is None or not all(m in x.replicates for x in (r, base)):
            return None
        return excess_change(r.metrics[m], base.metrics[m], floor.value, r.replicates[m], base.replicates[m])

    def claims(self) -> list[ClaimCheck | None]:
        """The claim check of every variant on the primary metric (None without an interval or
        a baseline at its guidance scale): on the change, or on the change of the excess over
        the floor where the floor is above FLOOR_SHARE of the baseline."""
        e = self.evaluate
        return [None if c is None else claim_check(self.gflops_saving(r), c.value, c.lo, c.hi, e.claim_threshold,
                                                   self.suite.lower_is_better, self.floor_share(r), self.excess(r),
                                                   f.reason if (f := self.floor(r)) is not None else "")
                for r, c in zip(self.results, self.changes())]

    def claim_lines(self) -> list[str]:
        lines = []
        for r, c in zip(self.results, self.claims()):
            if c is not None:
                lines.append(f"{r.variant.name}: {c.line}")
            elif self.baseline_for(r) is None:
                lines.append(f"{r.variant.name}: no baseline at guidance scale {r.variant.guidance_scale:g} "
                             f"(no other variant was evaluated at it): not compared")
        return lines

    def _intervals(self, metrics: dict, replicates: dict) -> dict:
        return {v: {"lo": iv.lo, "hi": iv.hi} for v in metrics if v in replicates
                for iv in [percentile_interval(metrics[v], replicates[v])]}

    def real_row(self) -> dict | None:
        """The real-data row for the summary: every metric with its interval."""
        if self.real is None:
            return None
        r = self.real
        return {"variant": r.name, "source": r.source, "num_samples": r.num_samples, **r.metrics,
                "intervals": self._intervals(r.metrics, r.replicates)}

    def floor_row(self) -> dict | None:
        """The floor under the headline baseline for the summary (None without one)."""
        base, e = self.baseline(), self.evaluate
        f = self.floor(base)
        if f is None:
            return None
        share = f.share
        row = {"value": f.value, "measured": f.measured, "rows": f.rows, "baseline_at_rows": f.baseline_at_rows,
               "share_of_baseline": share,
               "judged_on": "excess" if f.value is not None and (share or 0) > FLOOR_SHARE else "change",
               "rule": f"above {FLOOR_SHARE:g} of the baseline's score the claim check judges the change of the "
                       "excess over the real-data floor"}
        if f.rows < e.num_samples:
            row["note"] = (f"{f.rows} held-out rows against {e.num_samples} samples per variant: a Fréchet distance "
                           f"grows as samples get fewer, so the floor is compared with the baseline at {f.rows} "
                           f"samples too (the mean over disjoint runs of its chunks); at {e.num_samples} samples it "
                           "is the baseline's score less the baseline's excess at the rows' count")
        if f.reason:
            row["not_comparable"] = f.reason
        return row

    def summary(self) -> dict:
        base = self.baseline()
        rows = []
        for r, f, claim in zip(self.results, self.front(), self.claims()):
            row = r.row(self.full_model_gflops(r))
            row["pareto"] = f
            b = self.baseline_for(r)
            row["baseline"] = b.variant.name if b else None
            qb = b.metrics[self.metric] if b else 0
            row["quality_change_vs_baseline"] = (r.metrics[self.metric] - qb) / abs(qb) if qb else None
            row["intervals"] = self._intervals(r.metrics, r.replicates)
            for value in r.metrics:
                ch = self.change(r, value)
                if ch is not None:
                    row["intervals"].setdefault(value, {}).update(change=ch.value, change_lo=ch.lo, change_hi=ch.hi)
            if claim is not None:
                row["quality_change_lo"], row["quality_change_hi"] = claim.lo, claim.hi
                if claim.excess is not None and math.isfinite(claim.excess):     # JSON has no infinity
                    row["excess_change_vs_baseline"] = claim.excess
                row["claim"] = claim.as_dict()
            rows.append(row)
        e = self.evaluate
        return {
            "checkpoint": self.checkpoint, "model": {"grid": self.cfg.model.grid, "width": self.cfg.model.width,
                                                     "depth": self.cfg.model.depth,
                                                     "nest_factors": self.cfg.model.nest_factors},
            "num_samples": e.num_samples, "seed": e.seed, "metric": self.metric,
            "lower_is_better": self.suite.lower_is_better, "reference": self.suite.reference,
            "baseline": {"variant": base.variant.name, "gflops_per_sample": base.gflops_per_sample,
                         self.metric: base.metrics[self.metric], "analytic_full_model_gflops": self.baseline_gflops},
            "baselines": {f"{r.variant.guidance_scale:g}": r.variant.name for r in self.results
                          if self.baseline_for(r) is r},
            "real_data": self.real_row(),
            "floor": self.floor_row(),
            "intervals": {"level": 0.95, "replicates": e.bootstrap_replicates,
                          "chunks": self.plan.num_chunks if self.plan else None,
                          "groups": self.plan.num_groups if self.plan else None,
                          "method": "percentile bootstrap over chunks of whole groups of samples (a group: the "
                                    "samples conditioned on one held-out clip, else one sample); the change vs the "
                                    "baseline is paired (same labels, seeds and bootstrap draws for every variant); "
                                    "the real-data row is resampled alike, independently (other data), and its value "
                                    "is held fixed in the excess reading, like the reference"},
            "claim": {"threshold": e.claim_threshold, "lines": self.claim_lines()},
            "variants": rows, "search": self.search.summary() if self.search else None,
            "unavailable_metrics": self.suite.unavailable, "protocols": self.suite.protocols,
        }


def run_evaluation(cfg: NestgenConfig, e: EvaluateConfig, suite: QualitySuite, data: EvalData,
                   map_batches: BatchMap, checkpoint: str = "", progress: Callable[[str], None] = print,
                   bar: bool | TextIO = True) -> EvaluationReport:
    """The model of `cfg` (the checkpoint's config) evaluated as `e` says, its batches run by
    `map_batches`; `progress` gets the log lines, `bar` is the progress bar (stream.stream_variants)."""
    variants = [prepare_variant(cfg, v) for v in variants_from_config(e)]
    search = None
    search_data, final_data = split_held_out(cfg, e, data)
    if e.search.enabled:
        s = e.search
        req = eval_requests(cfg, search_data, s.num_samples, s.seed)
        progress(f"schedule search: budget {s.budget_gflops or s.budget_fraction} "
                 f"({'GFLOPs' if s.budget_gflops else 'x the full model'}), {suite.primary} on "
                 f"{s.num_samples} held-out seeds")
        plan = StreamPlan(s.num_samples, e.interval_chunks, groups=req.groups)
        search = search_schedule(cfg, s, lambda vs: stream_variants(suite, vs, req, plan, e.batch_size, map_batches,
                                                                    bar), suite.primary, suite.lower_is_better)
        progress(f"searched schedule: {search.chosen.name}")
        variants.append(prepare_variant(cfg, search.chosen))
    req = eval_requests(cfg, final_data, e.num_samples, e.seed)
    progress(f"evaluating {len(variants)} variants x {e.num_samples} samples")
    plan = StreamPlan(e.num_samples, e.interval_chunks, e.grid_samples, e.bootstrap_replicates, e.seed, req.groups,
                      matched=real_row_count(e, suite, data))
    results = stream_variants(suite, variants, req, plan, e.batch_size, map_batches, bar)
    real = score_real_data(e, suite, data)
    report = EvaluationReport(cfg, e, results, suite, variant_gflops(cfg, baseline_variant(cfg)), search, checkpoint, real,
                              plan=plan)
    floor = report.floor(report.baseline())
    if real is not None and floor is not None:
        progress(f"{real.name}: {suite.primary} {floor.measured:.4g} on {real.num_samples} held-out rows "
                 f"(the floor){floor.comparison(e.num_samples)}")
    for line in report.claim_lines():
        progress(f"claim check: {line}")
    return report


def local_map(model, cfg: NestgenConfig, suite: QualitySuite, tokenizer=None) -> BatchMap:
    """Every batch decoded and reduced in this process, one after another: the builtin map."""
    return partial(map, partial(run_batch, eval_worker(model, cfg, tokenizer), suite.features()))
