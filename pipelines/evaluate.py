"""The Ray evaluation step: quality against GFLOPs for every decode variant, on MLflow.

    driver: checkpoint (+ its tokenizer) -> held-out reference + quality suite
            -> [schedule search] -> every variant x N requests as batch jobs that
            nestgen.evaluation maps over a pool of EvalWorker actors (`actor_pool`:
            a batch lost with its worker is redone by another;
            model, tokenizer and metric feature nets loaded
            once each, GPU when the cluster has one), each returning summed metric
            statistics per chunk of samples and the grid's few samples, never the
            samples (nestgen.evaluation.stream) -> merged metrics, intervals, claim
            check -> files under the output URL -> MLflow: a parent run with a child
            run per variant.

The evaluated config is the checkpoint's model, train (conditioning) and data sections
with the caller's evaluate, decode sampling and mlflow sections: the reference is the data
the model was trained on, the variants are what the caller asks for.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, fields, replace
from typing import Iterator

from nestgen.checkpoint import load_generator
from nestgen.config import NestgenConfig
from nestgen.evaluation import (BatchJob, BatchMap, BatchStats, EvaluationReport, build_quality_suite, eval_worker,
                                load_eval_data, local_map, prepare_variant, run_batch, run_evaluation)
from nestgen.evaluation.outputs import write_outputs
from nestgen.render import tokens_to_pixels
from nestgen.storage import read_bytes
from pipelines import console
from pipelines.config import RunConfig, load_run_config
from pipelines.ray_runtime import init_ray
from pipelines.mlflow_runs import Run, start_run
from pipelines.model_registry import resolve_model_uri


def evaluation_config(user: RunConfig, trained: NestgenConfig) -> RunConfig:
    """The trained model's library sections with this run's name, evaluation, sampling knobs
    and orchestration sections (tracking, scaling)."""
    decode = replace(trained.decode, temperature=user.decode.temperature,
                     temperature_schedule=user.decode.temperature_schedule,
                     choice_temperature=user.decode.choice_temperature,
                     guidance_schedule=user.decode.guidance_schedule)
    library = {f.name: getattr(trained, f.name) for f in fields(NestgenConfig)}
    return replace(user, **(library | {"name": user.name, "evaluate": user.evaluate, "decode": decode}))


class EvalWorker:
    """Ray actor: the checkpoint's model and tokenizer, running batch jobs of any variant and
    reducing them to metric statistics with the suite's feature functions."""

    def __init__(self, checkpoint: str, features: dict):
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, trained, tok = load_generator(checkpoint, device)
        self.worker = eval_worker(model, trained, tok)
        self.features = features

    def run(self, job: BatchJob) -> BatchStats:
        return run_batch(self.worker, self.features, job)

    def device(self) -> str:
        return str(self.worker.device)


@contextlib.contextmanager
def actor_pool(checkpoint: str, cfg: RunConfig, suite) -> Iterator[tuple[BatchMap, list[str]]]:
    """(the map that runs batch jobs on a pool of EvalWorker actors (on_live_workers), the
    actors' device names). The actors are killed on exit: their CPUs (and GPUs) go back to
    the cluster when the step ends, not when a garbage collection happens to free the last
    reference (the next step, e.g. another seed's training, waits for those resources)."""
    import ray
    e = cfg.evaluate
    gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    # spread over the nodes: a node that dies takes as few workers as it can with it
    actor = ray.remote(num_cpus=e.cpus_per_worker, num_gpus=gpus, scheduling_strategy="SPREAD")(EvalWorker)
    features = ray.put(suite.features())
    workers = [actor.remote(checkpoint, features) for _ in range(e.num_workers)]
    try:
        devices = ray.get([w.device.remote() for w in workers])
        yield (lambda jobs: on_live_workers(workers, jobs, lambda w, job: w.run.remote(job))), devices
    finally:
        for w in workers:
            ray.kill(w)


def on_live_workers(workers: list, tasks: list, call) -> Iterator:
    """The results of call(worker, task) -> ObjectRef for every task, in the tasks' order, one
    task at a time per worker. A worker that dies (its process or its node) is dropped and the
    batch it held is run again by a live one: a batch's result depends only on its variant,
    requests and first sample (seeded), so the redone batch is the one lost and the results
    are those of a run without the fault. Workers are not restarted: a restart waits for room
    on some node, and the survivors' room may never free while they hold it. With no worker
    left, one line says so (the step fails; the next `nestgen run` runs it again)."""
    import ray
    from ray.exceptions import RayActorError
    todo = list(range(len(tasks)))[::-1]           # next task last; a lost one goes back on top
    idle, running, done, lost, nxt = list(workers), {}, {}, [], 0
    while nxt < len(tasks):
        while idle and todo:
            i, w = todo.pop(), idle.pop()
            running[call(w, tasks[i])] = (i, w)
        if not running:
            raise RuntimeError(f"evaluate: all {len(workers)} evaluation workers died "
                               f"(last: {str(lost[-1]).splitlines()[0]}); run the step again")
        [ref], _ = ray.wait(list(running), num_returns=1)
        i, w = running.pop(ref)
        try:
            done[i] = ray.get(ref)
            idle.append(w)
        except RayActorError as e:
            lost.append(e)
            todo.append(i)
        while nxt in done:
            yield done.pop(nxt)
            nxt += 1


@dataclass
class EvaluateResult:
    report: EvaluationReport
    files: dict
    run_id: str | None
    seconds: float


def evaluate(cfg: RunConfig, output_url: str, checkpoint: str = "", use_ray: bool = True,
             parent_run_id: str | None = None, log_mlflow: bool = True, run_key: str = "") -> EvaluateResult:
    """Evaluate `checkpoint` (or cfg.evaluate.checkpoint) as cfg.evaluate says; ray.init is the caller's.
    With run_key (a DAG step's fingerprint), a retried step logs to the run of its earlier
    attempt and replaces that attempt's variant runs (pipelines.mlflow_runs.start_run)."""
    t0 = time.perf_counter()
    checkpoint = resolve_model_uri(checkpoint or cfg.evaluate.checkpoint, cfg.mlflow.tracking_uri)
    if not checkpoint:
        raise ValueError("no checkpoint to evaluate: set evaluate.checkpoint or pass --checkpoint")
    model, trained, tok = load_generator(checkpoint)
    ecfg = evaluation_config(cfg, trained)
    run = start_run(ecfg, "evaluate", output_url, None, parent_run_id, run_key) if log_mlflow else None
    with run or contextlib.nullcontext(), \
            run.system_metrics(ecfg.mlflow.system_metrics_every_s) if run else contextlib.nullcontext():
        if run and ecfg.data.source == "shards":
            from nestgen.data.shards import read_manifest
            run.log_dataset(ecfg.data.url, read_manifest(ecfg.data.url)["input_fingerprint"], "tokens", "evaluation")
        data = load_eval_data(ecfg)
        render = lambda t: tokens_to_pixels(t, ecfg.model.grid, tok)  # noqa: E731
        suite = build_quality_suite(ecfg, ecfg.evaluate, data, render)
        for name, why in suite.unavailable.items():
            print(f"[evaluate] {name}: not reported. {why}")
        pool = (actor_pool(checkpoint, ecfg, suite) if use_ray
                else contextlib.nullcontext((local_map(model, ecfg, suite, tok), ["cpu"])))
        with pool as (map_batches, devices):
            report = run_evaluation(ecfg, ecfg.evaluate, suite, data, map_batches, checkpoint,
                                    progress=lambda s: print(f"[evaluate] {s}", flush=True), bar=console.stream())
        print(report.table(), flush=True)
        files = write_outputs(report, output_url)
        if run:
            log_to_mlflow(run, ecfg, report, files,
                          {"workers": len(devices), "device": devices[0], "checkpoint": checkpoint})
    return EvaluateResult(report, files, run.run_id if run else None, time.perf_counter() - t0)


SAMPLES_KEY = "samples"
VARIANT_STEP = "evaluate.variant"          # the nestgen.step tag of a variant's child run


def log_to_mlflow(run: Run, cfg: RunConfig, report: EvaluationReport, files: dict, extra: dict) -> None:
    """The evaluation on its run: params, headline metrics, the plot and summary; a child run
    per variant with its metrics and samples (the grid as image SAMPLES_KEY, clips as MP4
    and GIF artifacts)."""
    base = report.baseline()
    search = report.search
    params = {"evaluate.metric": report.metric, "evaluate.checkpoint_resolved": extra["checkpoint"],
              "evaluate.workers": extra["workers"], "evaluate.device": extra["device"],
              "evaluate.reference": report.suite.reference[:500]}
    if search:
        params.update({"search.chosen": search.chosen.name, "search.budget_gflops": search.budget_gflops})
    for name, why in report.suite.unavailable.items():
        params[f"unavailable.{name}"] = why[:500]
    # a retried step's run (run key) keeps what an earlier attempt logged: MLflow params are write-once
    logged = run.client.get_run(run.run_id).data.params
    run.log_params({k: v for k, v in params.items() if k not in logged})
    top = {"baseline_gflops_per_sample": base.gflops_per_sample,
           f"baseline_{report.metric}": base.metrics[report.metric]}
    chosen = report.searched()
    if chosen is not None:
        top.update({"searched_gflops_saving": report.gflops_saving(chosen),
                    f"searched_{report.metric}": chosen.metrics[report.metric]})
    if report.real is not None and report.metric in report.real.metrics:      # the metric's floor
        top[f"real_data_{report.metric}"] = report.real.metrics[report.metric]
    run.log_metrics(top)
    run.log_files([files["plot"], files["summary"]])
    # the variant runs of an earlier attempt of this run are replaced, not added to
    for old in run.client.search_runs([run.experiment_id], filter_string=(
            f"tags.`mlflow.parentRunId` = '{run.run_id}' and tags.`nestgen.step` = '{VARIANT_STEP}'")):
        run.client.delete_run(old.info.run_id)
    for row, r in zip(report.summary()["variants"], report.results):
        with run.child(r.variant.name, VARIANT_STEP) as child:
            child.log_params({"schedule": r.schedule, "schedule_requested": r.variant.schedule,
                              "cache": r.variant.cache, "steps": prepare_variant(cfg, r.variant).decode.steps,
                              "guidance_scale": r.variant.guidance_scale, "temperature": cfg.decode.temperature,
                              "label": r.variant.label or "-", "num_samples": cfg.evaluate.num_samples})
            metrics = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k != "guidance_scale"}
            metrics["pareto"] = float(row["pareto"])
            child.log_metrics(metrics)
            samples = dict(files["samples"].get(r.variant.name, {}))
            if "png" in samples:
                child.log_image(SAMPLES_KEY, read_bytes(samples.pop("png")))
            child.log_files(list(samples.values()), "samples")


def cmd_evaluate(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    if not args.local:
        init_ray(args.ray_address)
    res = evaluate(cfg, args.out, args.checkpoint or "", use_ray=not args.local, log_mlflow=not args.no_mlflow)
    s = res.report.summary()
    print(json.dumps({"summary": res.files["summary"], "plot": res.files["plot"], "mlflow_run_id": res.run_id,
                      "metric": s["metric"], "baseline": s["baseline"],
                      "searched": s["search"]["chosen"] if s["search"] else None, "claims": s["claim"]["lines"],
                      "seconds": round(res.seconds, 1)}, indent=1))
    return 0
