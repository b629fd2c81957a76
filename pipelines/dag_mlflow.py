"""The DAG in MLflow: one parent run per pipeline run, one child run per step.

Steps that open their own MLflow run (tokenizer, train, evaluate) open it as a child of the
pipeline run and report its id in their outputs; the tracker adds the DAG's tags to it.
Other steps (and skipped ones) get a child run from the tracker, with their outputs as
params and the data they read (their outputs' DATASETS) as dataset inputs. The parent gets the DAG (dag.json and a Mermaid diagram) as artifacts.
"""
from __future__ import annotations

import json
import time

from pipelines.config import RunConfig
from pipelines.dag import Runner, StepRecord
from pipelines.mlflow_runs import Run, runs_page_url, start_run

DATASETS = "mlflow_datasets"     # a step output: [{name, url, digest}] of the data the step read


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
        self.run: Run | None = None

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run else None

    def start(self, runner: Runner) -> None:
        self.run = start_run(self.cfg, "pipeline", runner.output_url)
        self.run.set_tags({"nestgen.dag": " -> ".join(s.name for s in runner.steps)})
        self._end_dead_runs(runner.output_url)
        self.t0 = time.perf_counter()

    def _end_dead_runs(self, output_url: str) -> None:
        """Pipeline runs of this output folder still RUNNING belong to runs that died without
        ending them (a killed `nestgen run`): this run holds the folder's lease, so no other
        is alive there. They end KILLED, naming this run, which continues their steps' runs."""
        client = self.run.client
        for dead in client.search_runs([self.run.experiment_id], filter_string=(
                f"tags.`nestgen.step` = 'pipeline' and tags.output_url = '{output_url}' "
                "and attributes.status = 'RUNNING'")):
            if dead.info.run_id != self.run_id:
                client.set_tag(dead.info.run_id, "nestgen.continued_by", self.run_id)
                client.set_terminated(dead.info.run_id, "KILLED")

    def step_parent(self, r: StepRecord) -> str | None:
        return self.run_id

    def step(self, r: StepRecord) -> None:
        run_id = r.outputs.get("mlflow_run_id") if r.status == "done" else None
        if run_id is None:
            child = self.run.child(f"step-{r.name}", r.name)
            child.log_params({f"output.{k}": str(v)[:500] for k, v in r.outputs.items()
                              if not isinstance(v, (dict, list))})
            for d in r.outputs.get(DATASETS, []) if r.status == "done" else []:
                child.log_dataset(d["url"], d["digest"], d["name"])
            child.end("FAILED" if r.status == "failed" else "FINISHED")
            run_id = child.run_id
        r.mlflow_run_id = run_id
        Run(self.run.client, run_id, self.run.experiment_id).set_tags({
            "dag.status": r.status, "dag.fingerprint": r.fingerprint[:16], "dag.folder": r.folder,
            "dag.attempts": r.attempts})
        self.run.log_metrics({f"step_seconds.{r.name}": r.seconds})

    def finish(self, runner: Runner, failed: Exception | None) -> None:
        self.run.log_metrics({"pipeline_seconds": time.perf_counter() - self.t0})
        self.run.log_bytes("dag.json", json.dumps(runner.summary(), indent=1, default=str).encode())
        self.run.log_bytes("dag.mmd", mermaid(runner).encode())
        if failed:
            self.run.set_tags({"error": str(failed)[:5000]})
        self.run.end("FAILED" if failed else "FINISHED")

    def runs_page(self) -> str:
        """The MLflow UI's table of this pipeline's experiment runs."""
        return runs_page_url(self.cfg, self.run.experiment_id)
