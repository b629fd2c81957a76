"""`nestgen run CONFIG`: the whole pipeline as one durable DAG run, tracked in MLflow."""
from __future__ import annotations

import time

from nestgen.storage import join, write_latest
from pipelines.cli_args import add_config_args, add_ray_address
from pipelines.config import RunConfig, load_run_config
from pipelines.dag import Runner
from pipelines.steps import build_steps


def make_runner(cfg: RunConfig, track: bool = True) -> Runner:
    from pipelines.dag_mlflow import MlflowTracker
    return Runner(build_steps(cfg), cfg.pipeline.output_url, MlflowTracker(cfg) if track else None,
                  cfg.pipeline.retries, cfg.pipeline.retry_backoff_s)


def run_pipeline(cfg: RunConfig, from_step: str | None = None, only: str | None = None,
                 dry_run: bool = False, ray_address: str | None = None) -> Runner:
    runner = make_runner(cfg, track=not dry_run)
    if dry_run:
        print(runner.describe(runner.plan(from_step, only)))
        return runner
    from pipelines.lease import Lease
    from pipelines.ray_runtime import init_ray
    # one writer per output folder: a second `nestgen run` there is refused, naming the first
    with Lease(cfg.pipeline.output_url, f"nestgen run ({cfg.name})"):
        init_ray(ray_address)
        t0 = time.perf_counter()
        try:
            runner.run(from_step, only)
        finally:
            name_latest(cfg, runner)
    print(next_steps(cfg, runner, time.perf_counter() - t0), flush=True)
    return runner


def pipeline_folder(cfg: RunConfig) -> str:
    """<output_url>/<config name>: where a config's pipeline names its model (LATEST), so
    configs sharing an output folder don't overwrite each other's."""
    return join(cfg.pipeline.output_url, cfg.name)


def name_latest(cfg: RunConfig, runner: Runner) -> None:
    """Point the config's LATEST at the train step's checkpoint once that step is complete,
    whether it ran now or earlier (also when a later step fails)."""
    train = runner.records.get("train")
    if train is not None and train.status in ("done", "skipped") and train.outputs.get("checkpoint_url"):
        write_latest(pipeline_folder(cfg), train.outputs["checkpoint_url"])


def next_steps(cfg: RunConfig, runner: Runner, seconds: float) -> str:
    out = {name: r.outputs for name, r in runner.records.items()}
    lines = [f"\npipeline finished in {seconds / 60:.1f} min; outputs under {runner.output_url} (dag.json lists them)"]
    ev = out.get("evaluate") or {}
    if ev:
        lines.append(f"  quality vs GFLOPs: {ev['plot_url']}  ({ev['metric']}; summary: {ev['summary_url']})")
        if "searched_schedule" in ev:
            lines.append(f"  searched schedule {ev['searched_schedule']} cache={ev['searched_cache']}: "
                         f"{ev['searched_gflops_saving']:.2f}x fewer GFLOPs, {ev['metric']} "
                         f"{ev['searched_quality']:.4g} vs {ev['baseline_quality']:.4g} (baseline)")
    if out.get("serve"):
        lines.append(f"  served samples: {out['serve'].get('sample_baseline')}, {out['serve'].get('sample_magnets')}")
    lines.append(f"  MLflow: mlflow ui --backend-store-uri {cfg.mlflow.resolved_uri()} --host 127.0.0.1"
                 " --port 5000   (then open http://127.0.0.1:5000)")
    ckpt = (out.get("train") or {}).get("checkpoint_url")
    if ckpt:
        fmt = "mp4" if cfg.model.is_video else "png"
        given = " --condition GIVEN.mp4" if cfg.train.cond_tokens else ""
        lines.append(f"  serve it: nestgen serve configs/serve_digits.yaml --checkpoint {ckpt}")
        lines.append(f"  query it: nestgen generate --url http://127.0.0.1:8000 --class 3 --schedule magnets{given}"
                     f" --out sample.{fmt}")
        lines.append("        or: curl -s -X POST http://127.0.0.1:8000/v1/generate -H 'content-type: application/json'"
                     f" -d '{{\"class_label\": 3, \"schedule\": \"magnets\", \"format\": \"{fmt}\"}}'")
    return "\n".join(lines)


def cmd_run(args) -> int:
    run_pipeline(load_run_config(args.config, args.overrides), args.from_step, args.only, args.dry_run,
                 args.ray_address)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="the whole pipeline as a durable DAG: data -> tokenizer -> tokenize -> "
                                    "train -> evaluate -> serve; unchanged complete steps are skipped")
    add_config_args(p)
    p.add_argument("--from", dest="from_step", help="re-run this step and everything after it")
    p.add_argument("--only", help="run just this step (its upstream steps must be complete)")
    p.add_argument("--dry-run", action="store_true", help="print the DAG and what would run or be skipped")
    add_ray_address(p, "$RAY_ADDRESS or a local Ray")
    p.set_defaults(func=cmd_run)
