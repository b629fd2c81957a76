"""The DAG runner: fingerprints, completion markers, skip/resume, retries, --from/--only,
and its MLflow record. Steps here are small functions writing files, so every behaviour of
the runner is checked without Ray; the full pipeline runs in test_pipeline_job.py."""
import json
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from nestgen.configschema import ConfigError
from pipelines.config import run_config_from_dict
from pipelines.dag import MARKER, Runner, Step, StepFailed, fingerprints
from pipelines.dag_mlflow import DATASETS, MlflowTracker
from pipelines.steps import build_steps


class Calls:
    def __init__(self):
        self.log: list[str] = []
        self.fail: dict[str, list[Exception]] = {}     # step -> what its next runs raise

    def step(self, name, deps=(), config=lambda: None):
        def run(ctx):
            self.log.append(name)
            if self.fail.get(name):
                raise self.fail[name].pop(0)
            with open(f"{ctx.folder}/out.txt", "w") as f:       # outputs live in the step's folder
                f.write(name + "".join(ctx.inputs[d]["value"] for d in deps))
            return {"value": name[0] + "".join(ctx.inputs[d]["value"] for d in deps)}
        return Step(name, _mkdir(run), list(deps), config)


def _mkdir(run):
    def wrapped(ctx):
        import os
        os.makedirs(ctx.folder, exist_ok=True)
        return run(ctx)
    return wrapped


def _dag(calls, cfg):
    return [calls.step("a", config=lambda: cfg["a"]), calls.step("b", ["a"], lambda: cfg["b"]),
            calls.step("c", ["a"]), calls.step("d", ["b", "c"])]


def test_runs_in_order_then_skips_everything(tmp_path):
    calls, cfg = Calls(), {"a": 1, "b": 1}
    recs = Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0).run()
    assert calls.log == ["a", "b", "c", "d"] and recs["d"].outputs == {"value": "dbaca"}
    assert all((tmp_path / f"{r.name}-{r.fingerprint[:12]}" / MARKER).exists() for r in recs.values())
    dag = json.loads((tmp_path / "dag.json").read_text())
    assert [s["status"] for s in dag["steps"]] == ["done"] * 4
    calls.log.clear()
    recs = Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0).run()
    assert calls.log == [] and [r.status for r in recs.values()] == ["skipped"] * 4
    assert recs["d"].outputs == {"value": "dbaca"}                  # outputs come back from the markers


def test_config_change_reruns_the_step_and_downstream_only(tmp_path):
    calls, cfg = Calls(), {"a": 1, "b": 1}
    Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0).run()
    before = fingerprints(_dag(calls, cfg))
    cfg["b"] = 2
    after = fingerprints(_dag(calls, cfg))
    assert before["a"] == after["a"] and before["c"] == after["c"]
    assert before["b"] != after["b"] and before["d"] != after["d"]   # d depends on b
    calls.log.clear()
    runner = Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0)
    assert runner.plan() == {"a": "skip", "b": "run", "c": "skip", "d": "run"}
    runner.run()
    assert calls.log == ["b", "d"]


def test_failed_run_resumes_from_the_first_incomplete_step(tmp_path):
    calls, cfg = Calls(), {"a": 1, "b": 1}
    calls.fail["c"] = [ValueError("bad input")]                      # permanent: not retried
    with pytest.raises(StepFailed, match="input/config error"):
        Runner(_dag(calls, cfg), str(tmp_path), retries=3, backoff_s=0).run()
    assert calls.log == ["a", "b", "c"]
    dag = {s["name"]: s for s in json.loads((tmp_path / "dag.json").read_text())["steps"]}
    assert dag["c"]["status"] == "failed" and dag["c"]["attempts"] == 1 and "bad input" in dag["c"]["error"]
    assert dag["d"]["status"] == "not_run"
    calls.log.clear()
    Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0).run()
    assert calls.log == ["c", "d"]


def test_transient_failures_are_retried(tmp_path):
    calls, cfg = Calls(), {"a": 1, "b": 1}
    calls.fail["b"] = [ConnectionError("reset by peer"), TimeoutError("storage")]
    recs = Runner(_dag(calls, cfg), str(tmp_path), retries=2, backoff_s=0).run()
    assert recs["b"].status == "done" and recs["b"].attempts == 3
    calls2 = Calls()
    calls2.fail["a"] = [ConnectionError("reset by peer")] * 5
    with pytest.raises(StepFailed, match="after 2 attempts"):
        Runner(_dag(calls2, cfg), str(tmp_path / "x"), retries=1, backoff_s=0).run()


def test_a_config_error_inside_ray_train_is_not_retried(tmp_path):
    """Ray Train reports a worker's ConfigError as a WorkerGroupError (after its own
    max_failures): the runner classifies it by the cause and does not retry it again."""
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from nestgen.configschema import ConfigError
    calls, cfg = Calls(), {"a": 1, "b": 1}
    bad = ConfigError("model.width: must be a positive multiple of heads=8, got 100")
    calls.fail["a"] = [WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(bad, "Traceback ...")})]
    with pytest.raises(StepFailed, match=r"not retried.*ConfigError: model.width.*inside WorkerGroupError"):
        Runner(_dag(calls, cfg), str(tmp_path), retries=3, backoff_s=0).run()
    assert calls.log == ["a"]                                       # one attempt, no DAG retries
    calls.log.clear()
    calls.fail["a"] = [WorkerGroupError("rank 1 died", {1: ConnectionError("peer reset")})]
    recs = Runner(_dag(calls, cfg), str(tmp_path), retries=3, backoff_s=0).run()
    assert calls.log[:2] == ["a", "a"] and recs["a"].attempts == 2       # transient: retried


def test_from_and_only(tmp_path):
    calls, cfg = Calls(), {"a": 1, "b": 1}
    Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0).run()
    calls.log.clear()
    runner = Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0)
    assert runner.plan(from_step="b") == {"a": "skip", "b": "run", "c": "skip", "d": "run"}
    runner.run(from_step="b")
    assert calls.log == ["b", "d"]
    calls.log.clear()
    Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0).run(only="c")
    assert calls.log == ["c"]
    with pytest.raises(StepFailed, match="needs \\['a'\\]"):
        Runner(_dag(Calls(), cfg), str(tmp_path / "fresh"), backoff_s=0).run(only="b")
    with pytest.raises(ValueError, match="unknown step"):
        Runner(_dag(calls, cfg), str(tmp_path), backoff_s=0).plan(only="zz")


def _branches(calls, b_and_c):
    """a -> (b, c) -> d, where b and c also run b_and_c(name) (e.g. wait for each other)."""
    def step(name, deps):
        plain = calls.step(name, deps)
        if name not in ("b", "c"):
            return plain
        def run(ctx):
            b_and_c(name)
            return plain.run(ctx)
        return Step(name, run, list(deps))
    return [step("a", []), step("b", ["a"]), step("c", ["a"]), step("d", ["b", "c"])]


def test_independent_branches_run_at_once_with_parallel_steps(tmp_path):
    """b and c each wait at a barrier for the other: only a runner that runs them at the same
    time gets past it. One step at a time (the default), the barrier breaks."""
    calls = Calls()
    meet = threading.Barrier(2, timeout=30)
    recs = Runner(_branches(calls, lambda name: meet.wait()), str(tmp_path / "two"), retries=0, parallel=2).run()
    assert calls.log[0] == "a" and sorted(calls.log[1:3]) == ["b", "c"] and calls.log[3] == "d"
    assert recs["d"].outputs["value"] in ("dbaca", "dcaba") and [r.status for r in recs.values()] == ["done"] * 4

    alone = threading.Barrier(2, timeout=1)
    with pytest.raises(StepFailed, match="BrokenBarrierError"):
        Runner(_branches(Calls(), lambda name: alone.wait()), str(tmp_path / "one"), retries=0).run()


def test_a_failed_branch_lets_the_running_one_finish_and_starts_nothing_new(tmp_path):
    calls, b_failed = Calls(), threading.Event()
    calls.fail["b"] = [ValueError("bad input in b")]

    def b_and_c(name):
        if name == "b":
            b_failed.set()               # b raises right after this (calls.fail)
        else:
            assert b_failed.wait(30)     # c is still running when b fails

    with pytest.raises(StepFailed, match="bad input in b"):
        Runner(_branches(calls, b_and_c), str(tmp_path), retries=0, parallel=4).run()
    dag = {s["name"]: s for s in json.loads((tmp_path / "dag.json").read_text())["steps"]}
    assert {n: s["status"] for n, s in dag.items()} == {"a": "done", "b": "failed", "c": "done", "d": "not_run"}
    assert (tmp_path / Path(dag["c"]["folder"]).name / MARKER).exists()   # c's outputs are kept
    calls.log.clear()
    Runner(_branches(calls, lambda name: None), str(tmp_path), parallel=4).run()
    assert calls.log == ["b", "d"]                                        # the re-run resumes there


def test_a_step_thread_that_exits_is_a_failed_step_not_a_hang(tmp_path):
    def leave(ctx):
        raise SystemExit(3)              # not an Exception: _run_step does not catch it
    with pytest.raises(StepFailed, match="step 'x' stopped: SystemExit: 3"):
        Runner([Step("x", leave), Step("y", lambda ctx: {})], str(tmp_path), parallel=2).run()
    dag = {s["name"]: s["status"] for s in json.loads((tmp_path / "dag.json").read_text())["steps"]}
    assert dag["x"] == "failed"


def test_parallel_steps_caps_the_steps_running_at_once(tmp_path):
    lock, active, peak = threading.Lock(), [0], [0]

    def run(ctx):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return {}
    Runner([Step(n, run) for n in "xyzw"], str(tmp_path), parallel=2).run()
    assert peak[0] == 2
    with pytest.raises(ConfigError, match="parallel_steps"):
        run_config_from_dict({"pipeline": {"parallel_steps": 0}})


def test_cycles_and_unknown_deps_are_errors():
    calls = Calls()
    with pytest.raises(ValueError, match="cycle"):
        Runner([calls.step("a", ["b"]), calls.step("b", ["a"])], "/tmp/x")
    with pytest.raises(ValueError, match="unknown step 'q'"):
        Runner([calls.step("a", ["q"])], "/tmp/x")


def test_mlflow_parent_run_and_a_child_per_step(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = run_config_from_dict({"name": "dagt", "mlflow": {"tracking_uri": uri, "experiment": "dag-test"}})
    calls = Calls()
    reads = lambda ctx: {"value": "e", DATASETS: [{"name": "raw", "url": str(tmp_path), "digest": "d1g35t"}]}  # noqa: E731
    steps = _dag(calls, {"a": 1, "b": 1}) + [Step("e", _mkdir(reads), ["d"])]
    tracker = MlflowTracker(cfg)
    Runner(steps, str(tmp_path / "out"), tracker, backoff_s=0).run()
    client = MlflowClient(uri)
    parent = client.get_run(tracker.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["nestgen.dag"] == "a -> b -> c -> d -> e"
    assert {a.path for a in client.list_artifacts(tracker.run_id)} == {"dag.json", "dag.mmd"}
    assert {"step_seconds.a", "step_seconds.d", "pipeline_seconds"} <= set(parent.data.metrics)
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker.run_id}'")
    assert sorted(k.info.run_name for k in kids) == ["step-a", "step-b", "step-c", "step-d", "step-e"]
    assert all(k.data.tags["dag.status"] == "done" and k.data.params["output.value"] for k in kids)
    [read] = [d.dataset for k in kids for d in k.inputs.dataset_inputs]     # what step e read
    assert (read.name, read.digest, json.loads(read.source)["uri"]) == ("raw", "d1g35t", str(tmp_path))
    # a re-run is a new parent whose children say "skipped"
    tracker2 = MlflowTracker(cfg)
    Runner(_dag(Calls(), {"a": 1, "b": 1}), str(tmp_path / "out"), tracker2, backoff_s=0).run()
    kids2 = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{tracker2.run_id}'")
    assert {k.data.tags["dag.status"] for k in kids2} == {"skipped"}


def test_nestgen_dag_shapes_and_fingerprints():
    raw = run_config_from_dict({"data": {"source": "shards", "url": "x"}, "model": {"vocab_size": 128}})
    names = [s.name for s in build_steps(raw)]
    assert names == ["data", "tokenizer", "tokenize", "train", "evaluate", "serve"]
    digits = run_config_from_dict({"pipeline": {"serve": False}})
    assert [s.name for s in build_steps(digits)] == ["train", "evaluate"]
    base = fingerprints(build_steps(raw))
    more = run_config_from_dict({"data": {"source": "shards", "url": "x"}, "model": {"vocab_size": 128},
                             "evaluate": {"num_samples": 99}, "mlflow": {"experiment": "elsewhere"}})
    fp = fingerprints(build_steps(more))
    assert [n for n in names if fp[n] != base[n]] == ["evaluate"]   # tracking never changes outputs
    tok = run_config_from_dict({"data": {"source": "shards", "url": "x"}, "model": {"vocab_size": 128},
                            "tokenizer": {"steps": 7}})
    fp = fingerprints(build_steps(tok))
    assert [n for n in names if fp[n] != base[n]] == ["tokenizer", "tokenize", "train", "evaluate", "serve"]


def test_retries_do_not_multiply_mlflow_runs_or_model_versions(tmp_path):
    """A retried (and a resumed) step continues the MLflow run keyed by its fingerprint, and
    logging and registering the same checkpoint again keeps its model and version."""
    from nestgen.checkpoint import save_checkpoint
    from nestgen.model.nested_transformer import NestedTransformer
    from pipelines.mlflow_runs import Run, start_run
    from pipelines.model_registry import log_generator, register_model
    cfg = run_config_from_dict({"name": "reuse", "mlflow": {"experiment": "reuse-test"},
                                "model": {"width": 32, "depth": 1}})
    ckpts = [save_checkpoint(str(tmp_path / f"{n}.pt"), cfg, NestedTransformer(cfg.model)) for n in "ab"]
    seen = []

    def train(ctx):
        with start_run(cfg, "train", ctx.folder, None, ctx.parent_run_id, ctx.fingerprint) as run:
            seen.append(run.run_id)
            if len(seen) == 1:
                raise ConnectionError("lost the cluster")
            version = register_model(run, log_generator(run, ckpts[0]), "reuse-model", "prod")
        return {"mlflow_run_id": run.run_id, "version": version}

    recs = Runner([Step("train", _mkdir(train))], str(tmp_path), MlflowTracker(cfg), retries=2, backoff_s=0).run()
    assert recs["train"].attempts == 2 and len(seen) == 2 and seen[0] == seen[1]
    recs = Runner([Step("train", _mkdir(train))], str(tmp_path), MlflowTracker(cfg), backoff_s=0).run(from_step="train")
    assert seen[2] == seen[0] and recs["train"].outputs["version"] == "1"
    client = MlflowClient()
    exp = client.get_experiment_by_name("reuse-test").experiment_id
    train_runs = client.search_runs([exp], filter_string="tags.`nestgen.step` = 'train'")
    assert [r.info.run_id for r in train_runs] == [seen[0]] and train_runs[0].info.status == "FINISHED"
    assert len(train_runs[0].outputs.model_outputs) == 1                           # one logged model
    assert [str(v.version) for v in client.search_model_versions("name = 'reuse-model'")] == ["1"]
    again = Run(client, seen[0], exp)
    assert register_model(again, log_generator(again, ckpts[1]), "reuse-model") == "2"   # a new checkpoint


def test_several_seeds_are_branches_that_survive_adding_a_seed():
    two = run_config_from_dict({"pipeline": {"seeds": [0, 1]}})
    steps = build_steps(two)
    assert [(s.name, s.deps) for s in steps] == [
        ("train-seed0", []), ("evaluate-seed0", ["train-seed0"]), ("train-seed1", []),
        ("evaluate-seed1", ["train-seed1"]), ("seeds", ["evaluate-seed0", "evaluate-seed1"]),
        ("serve", ["train-seed0"])]
    fp = fingerprints(steps)
    assert fp["train-seed0"] != fp["train-seed1"]
    three = fingerprints(build_steps(run_config_from_dict({"pipeline": {"seeds": [0, 1, 2]}})))
    assert all(three[n] == fp[n] for n in ("train-seed0", "evaluate-seed0", "train-seed1", "evaluate-seed1"))
    assert three["seeds"] != fp["seeds"]
    one = fingerprints(build_steps(run_config_from_dict({})))
    assert one["train"] != fingerprints(build_steps(run_config_from_dict({"seed": 1})))["train"]
    with pytest.raises(ConfigError, match="pipeline.seeds: must be empty"):
        run_config_from_dict({"pipeline": {"seeds": [3]}})
