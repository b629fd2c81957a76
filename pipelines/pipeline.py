"""`nestgen run CONFIG`: the whole pipeline as one durable DAG run, tracked in MLflow."""
from __future__ import annotations

import os
import tempfile
import time

from nestgen.checkpoint_files import republish, write_latest
from nestgen.storage import join, protocol_prefix
from pipelines import console, lease
from pipelines.config import RunConfig, load_run_config, outside_job_copy, refuse_placeholders
from pipelines.dag import Runner, StepFailed
from pipelines.steps import build_steps, served_train_step


def make_runner(cfg: RunConfig, track: bool = True) -> Runner:
    from pipelines.dag_mlflow import MlflowTracker
    return Runner(build_steps(cfg), cfg.pipeline.output_url, MlflowTracker(cfg) if track else None,
                  cfg.pipeline.retries, cfg.pipeline.retry_backoff_s, cfg.pipeline.parallel_steps)


def run_pipeline(cfg: RunConfig, from_step: str | None = None, only: str | None = None,
                 dry_run: bool = False, ray_address: str | None = None, verbose: bool = False) -> Runner:
    """Run (or with dry_run, plan) the DAG. The console shows a line per step, a progress bar
    per long step and a closing summary; unless `verbose`, Ray's output and everything else
    goes to the run's log file (pipelines.console)."""
    cfg = outside_job_copy(cfg)
    refuse_placeholders(cfg)
    runner = make_runner(cfg, track=not dry_run)
    if dry_run:
        print(runner.describe(runner.plan(from_step, only)))
        return runner
    from pipelines.ray_runtime import dashboard_url, init_ray
    log = None if verbose else log_path(cfg)
    # one writer per output folder: a second `nestgen run` there is refused, naming the first,
    # before it writes anything there (its log included)
    with lease.Lease(cfg.pipeline.output_url, f"nestgen run ({cfg.name})", cfg.pipeline.lease_ttl_s), \
            console.quiet(log):
        console.say(f"nestgen run {cfg.name}: {' -> '.join(s.name for s in runner.steps)}, "
                    f"outputs under {runner.output_url}")
        if log:
            console.say(f"  log (Ray and step output): {log}   (--verbose shows it here)")
        import ray
        local = not (ray.is_initialized() or ray_address or os.environ.get("RAY_ADDRESS"))
        init_ray(ray_address)
        if dashboard_url():
            console.say(f"  Ray dashboard: {dashboard_url()}")
        t0 = time.perf_counter()
        try:
            runner.run(from_step, only)
        except StepFailed as e:
            raise StepFailed(f"{e}" + (f"; the traceback is in {log}" if log else "")) from None
        finally:
            try:
                name_latest(cfg, runner)
            finally:
                if local:
                    ray.shutdown()      # the Ray this run started, while its chatter still goes to the log
        outputs = {name: r.outputs for name, r in runner.records.items()}
        console.say(console.closing_summary(cfg, outputs, runner.output_url, time.perf_counter() - t0,
                                            runner.tracker.runs_page(), served_train_step(cfg)))
    return runner


def log_path(cfg: RunConfig) -> str:
    """<output_url>/logs/run-<UTC time>.log, or under the temporary folder for a remote output URL."""
    name = f"run-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log"
    if protocol_prefix(cfg.pipeline.output_url) not in ("", "file://"):
        return os.path.join(tempfile.gettempdir(), "nestgen-logs", cfg.name, name)
    return os.path.join(cfg.pipeline.output_url.removeprefix("file://"), "logs", name)


def pipeline_folder(cfg: RunConfig) -> str:
    """<output_url>/<config name>: where a config's pipeline names its model (LATEST), so
    configs sharing an output folder don't overwrite each other's."""
    return join(cfg.pipeline.output_url, cfg.name)


def name_latest(cfg: RunConfig, runner: Runner) -> None:
    """Point the config's LATEST at the (first seed's) train step's checkpoint once that step
    is complete, whether it ran now or earlier (also when a later step fails)."""
    train = runner.records.get(served_train_step(cfg))
    if train is not None and train.status in ("done", "skipped") and train.outputs.get("checkpoint_url"):
        lease.check(pipeline_folder(cfg))          # a run that lost the output folder's lease names nothing
        # a LATEST names only its own folder's published checkpoints: a copy there (once per checkpoint)
        write_latest(pipeline_folder(cfg), republish(pipeline_folder(cfg), train.outputs["checkpoint_url"]))


def cmd_run(args) -> int:
    overrides = list(args.overrides)
    if args.seeds is not None:
        seed = load_run_config(args.config, args.overrides).seed
        overrides.append(f"pipeline.seeds={list(range(seed, seed + args.seeds))}")
    run_pipeline(load_run_config(args.config, overrides), args.from_step, args.only, args.dry_run,
                 args.ray_address, args.verbose)
    return 0
