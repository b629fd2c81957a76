"""Quality against compute for decode variants (schedule x cache policy x guidance).

variants: what is decoded, prepared once (schedule parsed, steps planned, GFLOPs counted on
that plan); data: the reference (the training split), the
held-out split and the requests; real: the held-out rows scored like samples (the floor);
quality: which metrics score samples (the registry; each metric's streamed form sits beside
it in nestgen.metrics); stream: batch jobs that workers reduce to summed statistics, run by
the caller's map, merged on the driver; search: schedule search under a GFLOPs budget; run:
one evaluation end to end (`local_map` runs its batches in this process), intervals and the
claim check (claim); report: Pareto front, table, plot. The Ray step (pipelines.evaluate)
runs the batches on an actor pool and logs to MLflow.
"""
from nestgen.evaluation.claim import ClaimCheck, claim_check, excess_change
from nestgen.evaluation.data import EvalData, eval_requests, load_eval_data
from nestgen.evaluation.quality import METRICS, MetricSpec, QualitySuite, build_quality_suite, lower_is_better
from nestgen.evaluation.real import RealDataResult, score_real_data
from nestgen.evaluation.report import pareto_front, quality_plot_png, results_table
from nestgen.evaluation.run import EvaluationReport, local_map, run_evaluation
from nestgen.evaluation.search import SearchResult, search_schedule, step_splits
from nestgen.evaluation.stream import BatchJob, BatchMap, BatchStats, StreamPlan, run_batch, stream_variants
from nestgen.evaluation.variants import (PreparedVariant, Requests, Variant, VariantResult, class_requests,
                                         eval_worker, prepare_variant, variants_from_config)

__all__ = ["ClaimCheck", "claim_check", "excess_change", "RealDataResult", "score_real_data", "EvalData", "eval_requests", "load_eval_data", "METRICS", "MetricSpec",
           "QualitySuite", "build_quality_suite", "lower_is_better", "pareto_front", "quality_plot_png",
           "results_table", "EvaluationReport", "local_map", "run_evaluation", "SearchResult", "search_schedule",
           "step_splits", "BatchJob", "BatchMap", "BatchStats", "StreamPlan", "run_batch", "stream_variants",
           "PreparedVariant", "Requests", "Variant", "VariantResult", "class_requests", "eval_worker",
           "prepare_variant", "variants_from_config"]
