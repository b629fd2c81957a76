"""The DAG in MLflow: one parent run per pipeline run, one child run per step.

Steps that open their own MLflow run (tokenizer, train, evaluate) open it as a child of the
pipeline run and report its id in their outputs; the tracker adds the DAG's tags to it.
Other steps (and skipped ones) get a child run from the tracker, with their outputs as
params. The parent gets the DAG (dag.json and a Mermaid diagram) as artifacts.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from pipelines.config import RunConfig
from pipelines.dag import Runner, StepRecord


def mermaid(runner: Runner) -> str:
    lines = ["graph LR"]
    for s in runner.steps:
        r = runner.records[s.name]
        lines.append(f'  {s.name}["{s.name}<br/>{r.status} {r.seconds:.0f}s"]')
        lines += [f"  {d} --> {s.name}" for d in s.deps]
    return "\n".join(lines)


class MlflowTracker:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.client = None
        self.run_id: str | None = None

    def start(self, runner: Runner) -> None:
        from pipelines.train_common import mlflow_run
        self.client, self.run_id = mlflow_run(self.cfg, "pipeline", runner.output_url)
        self.client.set_tag(self.run_id, "nestgen.dag", " -> ".join(s.name for s in runner.steps))
        self.t0 = time.perf_counter()

    def step_parent(self, r: StepRecord) -> str | None:
        return self.run_id

    def step(self, r: StepRecord) -> None:
        from mlflow.entities import Metric, Param
        run_id = r.outputs.get("mlflow_run_id") if r.status == "done" else None
        if run_id is None:
            exp = self.client.get_run(self.run_id).info.experiment_id
            run_id = self.client.create_run(exp, run_name=f"step-{r.name}", tags={
                "mlflow.parentRunId": self.run_id, "nestgen.step": r.name}).info.run_id
            flat = {f"output.{k}": str(v)[:500] for k, v in r.outputs.items() if not isinstance(v, (dict, list))}
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in list(flat.items())[:100]])
            self.client.set_terminated(run_id, "FAILED" if r.status == "failed" else "FINISHED")
        r.mlflow_run_id = run_id
        for k, v in {"dag.status": r.status, "dag.fingerprint": r.fingerprint[:16], "dag.folder": r.folder,
                     "dag.attempts": str(r.attempts)}.items():
            self.client.set_tag(run_id, k, v)
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"step_seconds.{r.name}", r.seconds, ts, 0)])

    def finish(self, runner: Runner, failed: Exception | None) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric("pipeline_seconds", time.perf_counter() - self.t0, ts, 0)])
        with tempfile.TemporaryDirectory() as d:
            for name, text in (("dag.json", json.dumps(runner.summary(), indent=1, default=str)),
                               ("dag.mmd", mermaid(runner))):
                with open(os.path.join(d, name), "w") as f:
                    f.write(text)
                self.client.log_artifact(self.run_id, os.path.join(d, name))
        if failed:
            self.client.set_tag(self.run_id, "error", str(failed)[:5000])
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
