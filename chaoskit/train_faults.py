"""Fault scenarios of training and of the driver on a LocalCluster (chaoskit.cluster): a worker
node dies mid-training (it comes back, or it does not), and `nestgen run` is SIGKILLed
mid-train; each returns a row of what happened, checked by tests/test_chaos_train.py and
tabled by benchmarks/chaos.py.

The chosen point is a training step: the train loop runs wrapped (`pausing`) so that every
rank, the first time it reaches that step, records its pid and node in a file and waits
there; once Ray Train has registered the last checkpoint before it (checkpoint_registered),
the harness kills what it wants while they wait. A rank that is restored finds its
file and goes on. Nothing in nestgen knows about it: the wrapped loop is what the test's
driver hands Ray Train (in process, or in `python -m chaoskit.train_faults`, a `nestgen`
whose workers pause).

Sizes: two Train workers of 1.5 CPUs on two 2-CPU worker nodes, so each node holds one rank
and a lost node's rank cannot move to the other one; Ray Data's 1-CPU tasks need a CPU
elsewhere (a 1-CPU worker node, or the head: beside a rank they fit nowhere and the ingest
would wait for ever).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from chaoskit.cluster import REPO, LocalCluster, wait_for

CPUS_PER_WORKER = 1.5
# how long Ray Train waits for its worker group to be placed before a retry (its default is
# 60 s): the scenario where the lost node does not come back fails in seconds, not minutes
START_TIMEOUT_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "8"}


def pausing(loop, step: int, folder: str):
    """`loop` (a Ray Train loop) whose ranks wait at `step` the first time they reach it,
    each after writing <folder>/paused-<rank> = {"pid", "node"}."""
    def loop_pausing(config):
        import ray
        import ray.train

        from nestgen.training.loop import NestedTrainer
        real = NestedTrainer.train_step
        rank = ray.train.get_context().get_world_rank()

        def train_step(self, *args):
            mark = os.path.join(folder, f"paused-{rank}")
            if self.step == step and not os.path.exists(mark):
                with open(mark + ".tmp", "w") as f:
                    json.dump({"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}, f)
                os.replace(mark + ".tmp", mark)
                while True:                  # until the harness kills this process
                    time.sleep(0.5)
            return real(self, *args)
        NestedTrainer.train_step = train_step
        loop(config)
    return loop_pausing


def paused_ranks(folder: Path, world: int) -> dict[int, dict] | None:
    marks = {r: folder / f"paused-{r}" for r in range(world)}
    if not all(m.exists() for m in marks.values()):
        return None
    return {r: json.loads(m.read_text()) for r, m in marks.items()}


def checkpoint_registered(out: Path, step: int) -> bool:
    """Whether Ray Train's controller has registered the checkpoint of `step` under `out` (its
    checkpoint_manager_snapshot.json lists it). A checkpoint the ranks reported is restored
    from only once it is registered: the controller collects reports when it polls the
    workers, and a node that dies before that poll takes its rank's report with it (Ray Train
    then restores from the checkpoint before)."""
    name = f"checkpoint_{step:08d}"
    for snap in out.rglob("checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snap.read_text())["checkpoint_results"]
        except (ValueError, KeyError, OSError):      # being rewritten
            continue
        if any(r["checkpoint_dir_name"] == name for r in results):
            return True
    return False


def tiny_config(name: str, out: Path, tracking: str, steps: int, every: int) -> dict:
    """The embedded digits (no tokenizer) on a small model: seconds per run on 2 cores."""
    return {"name": name, "seed": 0,
            "model": {"width": 32, "depth": 1, "heads": 8},
            "train": {"steps": steps, "batch_size": 32, "log_every": 5, "warmup_steps": 2},
            "data": {"source": "digits"},
            "scaling": {"num_workers": 2, "cpus_per_worker": CPUS_PER_WORKER, "checkpoint_every": every,
                        "max_failures": 1, "shuffle_buffer": 64},
            "mlflow": {"tracking_uri": tracking, "experiment": f"chaos-{name}", "system_metrics_every_s": 0},
            "pipeline": {"output_url": str(out), "serve": False, "retries": 0}}


LOSS = "loss/f1"          # the full-size model's loss, as the trainer logs it


def mlflow_facts(tracking: str, experiment: str, run_name: str) -> dict:
    """The runs named `run_name` and, of the one, its loss history (step -> value)."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'") if exp else []
    out = {"runs": len(runs), "statuses": sorted(r.info.status for r in runs), "loss": {}, "duplicate_steps": 0}
    if len(runs) == 1:
        hist = client.get_metric_history(runs[0].info.run_id, LOSS)
        steps = [m.step for m in hist]
        out["duplicate_steps"] = len(steps) - len(set(steps))
        out["loss"] = {m.step: m.value for m in hist}
        out["logged_ms"] = {m.step: m.timestamp for m in hist}
    return out


def checkpoint_facts(url: str) -> dict:
    from nestgen.checkpoint import read_checkpoint
    ck = read_checkpoint(url)
    return {"step": ck["step"], "scheduler_steps": ck["scheduler"]["last_epoch"], "model": ck["model"]}


def max_weight_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---- train: a worker node dies mid-training -----------------------------------------------
def train_scenario(c: LocalCluster, root: Path, node_returns: bool, steps: int = 20, every: int = 10,
                   pause_at: int = 13, name: str = "train") -> dict:
    """fit() on the cluster (this process is the driver); at `pause_at` rank 1's node is
    SIGKILLed. node_returns: the node starts again at once and Ray Train restores from the
    last checkpoint by itself. Else the fit must fail with one line (no hang); the node then
    comes back and the same fit resumes (what the next `nestgen run` does)."""
    import pipelines.train
    from pipelines.config import run_config_from_dict
    from pipelines.errors import explain
    tracking = f"sqlite:///{root}/mlflow.db"
    cfg = run_config_from_dict(tiny_config(name, root / "out", tracking, steps, every))
    marks = root / "marks"
    marks.mkdir(parents=True)
    row: dict = {"scenario": "train: node dies, " + ("restarted" if node_returns else "stays down, next run resumes")}
    real_loop = pipelines.train.train_loop_per_worker
    pipelines.train.train_loop_per_worker = pausing(real_loop, pause_at, str(marks))
    got: dict = {}

    def fit() -> None:
        try:
            # run_key: what `nestgen run` passes (the step's fingerprint): a resumed step keeps its run
            got["result"] = pipelines.train.fit(cfg, str(root / "out"), run_key=f"chaos-{name}")
        except Exception as e:          # noqa: BLE001 - recorded, judged by the caller
            got["error"] = e
    try:
        t = threading.Thread(target=fit, daemon=True)
        t.start()
        ranks = wait_for(lambda: paused_ranks(marks, 2) or (not t.is_alive() and "fit ended"), 240,
                         "both ranks to reach the pause step")
        if not isinstance(ranks, dict):
            raise RuntimeError(f"the fit ended before pausing: {got}")
        wait_for(lambda: checkpoint_registered(root / "out", every), 120, f"the step-{every} checkpoint registered")
        victim = c.node_name(ranks[1]["node"])
        row["victim"] = victim
        killed_wall = time.time()
        c.kill_node(victim)
        if node_returns:
            c.add_worker(victim)
        t.join(300)
        row["hung"] = t.is_alive()
        if "error" in got:
            row["failure"] = explain(got["error"])
            row["seconds_to_fail"] = round(time.time() - killed_wall, 1)
        if not node_returns and not row["hung"]:
            pipelines.train.train_loop_per_worker = real_loop        # the next `nestgen run`
            c.add_worker(victim)
            fit()
    finally:
        pipelines.train.train_loop_per_worker = real_loop
    res = got.get("result")
    ml = mlflow_facts(tracking, cfg.mlflow.experiment, f"train-{name}")
    after = [s for s in ml["loss"] if s > pause_at]
    row.update(
        final_step=res.metrics.get("step") if res else None, start_step=res.start_step if res else None,
        mlflow_runs=ml["runs"], mlflow_statuses=ml["statuses"], duplicate_metric_steps=ml["duplicate_steps"],
        loss=ml["loss"],
        # kill -> the restored rank 0 logged its first metrics past the pause step
        seconds_to_recover=round(ml["logged_ms"][min(after)] / 1000 - killed_wall, 1) if after else None)
    if res:
        ck = checkpoint_facts(res.checkpoint_url)
        row.update(checkpoint_step=ck["step"], scheduler_steps=ck["scheduler_steps"])
        row["_model"] = ck["model"]
    return row


def unfaulted_train(root: Path, steps: int = 20, every: int = 10, name: str = "clean") -> dict:
    """The same training with nothing killed: the reference."""
    import pipelines.train
    from pipelines.config import run_config_from_dict
    tracking = f"sqlite:///{root}/mlflow.db"
    cfg = run_config_from_dict(tiny_config(name, root / "out", tracking, steps, every))
    res = pipelines.train.fit(cfg, str(root / "out"))
    ml = mlflow_facts(tracking, cfg.mlflow.experiment, f"train-{name}")
    return {"final_step": res.metrics.get("step"), "loss": ml["loss"], "_model": checkpoint_facts(res.checkpoint_url)["model"]}


# ---- driver: `nestgen run` SIGKILLed mid-train ---------------------------------------------
def nestgen_run_args(cfg_file: Path, address: str) -> list[str]:
    return ["run", str(cfg_file), "--only", "train", "--ray-address", address]


def driver_scenario(c: LocalCluster, root: Path, steps: int = 20, every: int = 10, pause_at: int = 13,
                    ttl_s: float = 10.0) -> dict:
    """`nestgen run --only train` (its workers pause at `pause_at`) is SIGKILLed there; run
    again at once it is refused by the lease (one line naming the dead holder); once the
    lease expired it takes over, resumes from the checkpoint and finishes."""
    import yaml
    tracking = f"sqlite:///{root}/mlflow.db"
    out = root / "out"
    cfg = tiny_config("driver", out, tracking, steps, every)
    cfg["pipeline"]["lease_ttl_s"] = ttl_s
    root.mkdir(parents=True, exist_ok=True)
    cfg_file = root / "driver.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    marks = root / "marks"
    marks.mkdir(parents=True)
    env = dict(c.env, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "chaoskit.train_faults", str(pause_at), str(marks), "--"]
    first = subprocess.Popen(cmd + nestgen_run_args(cfg_file, c.address), cwd=root, env=env,
                             stdout=subprocess.DEVNULL, stderr=open(root / "first.log", "wb"), start_new_session=True)
    row: dict = {"scenario": "driver: nestgen run SIGKILLed mid-train, run again"}
    try:
        wait_for(lambda: paused_ranks(marks, 2) or first.poll() is not None, 300, "the first run's ranks to pause")
        if first.poll() is not None:
            raise RuntimeError(f"the first run ended before pausing: {(root / 'first.log').read_text()[-2000:]}")
        wait_for(lambda: checkpoint_registered(out, every), 120, f"the step-{every} checkpoint registered")
        killed = time.time()
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
    nestgen = [sys.executable, "-m", "pipelines"] + nestgen_run_args(cfg_file, c.address)
    again = subprocess.run(nestgen, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    row["refused_rc"], row["refused"] = again.returncode, again.stderr.strip().splitlines()[-1:]
    wait_for(lambda: lease_expired(out), ttl_s + 60, "the killed run's lease to expire")
    final = subprocess.run(nestgen, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    row["rerun_rc"] = final.returncode
    row["rerun_tail"] = (final.stdout + final.stderr)[-1500:]
    row["seconds_to_recover"] = round(time.time() - killed, 1)
    dag = json.loads((out / "dag.json").read_text())
    train = next(s for s in dag["steps"] if s["name"] == "train")
    row.update(step_status=train["status"], start_step=train["outputs"].get("start_step"))
    if train["status"] in ("done", "skipped"):
        ck = checkpoint_facts(train["outputs"]["checkpoint_url"])
        row.update(checkpoint_step=ck["step"], scheduler_steps=ck["scheduler_steps"])
    ml = mlflow_facts(tracking, "chaos-driver", "train-driver")
    pipe = mlflow_facts(tracking, "chaos-driver", "pipeline-driver")
    row.update(mlflow_runs=ml["runs"], mlflow_statuses=ml["statuses"], duplicate_metric_steps=ml["duplicate_steps"],
               loss=ml["loss"], pipeline_runs=pipe["statuses"])
    return row


def lease_expired(folder: Path) -> bool:
    """Whether the highest lease record under `folder` has expired (pipelines.lease's layout)."""
    records = sorted((folder / "_lease").glob("*.json"))
    if not records:
        return True
    try:
        return json.loads(records[-1].read_text())["expires"] < time.time()
    except (ValueError, KeyError):
        return False


def _main(argv: list[str]) -> int:
    """python -m chaoskit.train_faults STEP MARKS -- <nestgen args>: nestgen with its Train
    workers pausing at STEP (the driver scenario's first run)."""
    import pipelines.train
    from pipelines.cli import main
    step, marks, sep, *rest = argv
    assert sep == "--", argv
    pipelines.train.train_loop_per_worker = pausing(pipelines.train.train_loop_per_worker, int(step), marks)
    return main(rest)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
