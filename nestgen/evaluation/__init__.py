"""Quality against compute for decode variants (schedule x cache policy x guidance).

variants: what is decoded and how it is timed; data: the held-out reference and requests;
quality: which metrics score samples; search: schedule search under a GFLOPs budget;
run: one evaluation end to end with injected sampling; report: Pareto front, table, plot.
The Ray step (pipelines.evaluate) spreads sampling over actors and logs to MLflow.
"""
from nestgen.evaluation.data import EvalData, eval_requests, load_eval_data
from nestgen.evaluation.quality import METRICS, MetricSpec, QualitySuite, build_quality_suite, lower_is_better
from nestgen.evaluation.report import pareto_front, quality_plot_png, results_table
from nestgen.evaluation.run import EvaluationReport, local_sampler, run_evaluation
from nestgen.evaluation.search import SearchResult, search_schedule, step_splits
from nestgen.evaluation.variants import (Requests, Variant, VariantResult, class_requests, eval_worker,
                                         sample_batch, sample_variants, variants_from_config)

__all__ = ["EvalData", "eval_requests", "load_eval_data", "METRICS", "MetricSpec", "QualitySuite", "build_quality_suite",
           "lower_is_better", "pareto_front", "quality_plot_png", "results_table", "EvaluationReport",
           "local_sampler", "run_evaluation", "SearchResult", "search_schedule", "step_splits", "Requests",
           "Variant", "VariantResult", "class_requests", "eval_worker", "sample_batch", "sample_variants",
           "variants_from_config"]
