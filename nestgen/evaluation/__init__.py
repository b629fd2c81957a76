"""Quality against compute for decode variants (schedule x cache policy x guidance).

variants: what is decoded and how it is timed; data: the reference (the training split), the
held-out split and the requests; real: the held-out rows scored like samples (the floor);
quality: which metrics score samples, as statistics that add up over chunks; stream:
workers reduce their samples to those statistics and the driver merges them; search:
schedule search under a GFLOPs budget; run: one evaluation end to end with injected
sampling, intervals and the claim check (claim); report: Pareto front, table, plot.
The Ray step (pipelines.evaluate) spreads sampling over actors and logs to MLflow.
"""
from nestgen.evaluation.claim import ClaimCheck, claim_check, excess_change
from nestgen.evaluation.data import EvalData, eval_requests, load_eval_data
from nestgen.evaluation.quality import METRICS, MetricSpec, QualitySuite, build_quality_suite, lower_is_better
from nestgen.evaluation.real import RealDataResult, score_real_data
from nestgen.evaluation.report import pareto_front, quality_plot_png, results_table
from nestgen.evaluation.run import EvaluationReport, local_sampler, run_evaluation
from nestgen.evaluation.search import SearchResult, search_schedule, step_splits
from nestgen.evaluation.stream import BatchStats, StreamPlan, stream_batch, stream_variants
from nestgen.evaluation.variants import (Requests, Variant, VariantResult, class_requests, eval_worker,
                                         sample_batch, variants_from_config)

__all__ = ["ClaimCheck", "claim_check", "excess_change", "RealDataResult", "score_real_data", "EvalData", "eval_requests", "load_eval_data", "METRICS", "MetricSpec",
           "QualitySuite", "build_quality_suite", "lower_is_better", "pareto_front", "quality_plot_png",
           "results_table", "EvaluationReport", "local_sampler", "run_evaluation", "SearchResult", "search_schedule",
           "step_splits", "BatchStats", "StreamPlan", "stream_batch", "stream_variants", "Requests", "Variant",
           "VariantResult", "class_requests", "eval_worker", "sample_batch", "variants_from_config"]
