"""Fault scenarios on a LocalCluster, shared by tests/test_chaos_*.py (tiny inputs, asserts)
and benchmarks/chaos.py (larger inputs, the results table): each runs a pipeline step with a
fault injected at an observable point and returns what it measured; comparing against the
unfaulted run is the caller's (`shard_rows`, `summary_results`).

The driver is this process (in a thread, so that this thread can watch and kill), connected
with `cluster.connect()`.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from chaoskit import faults
from chaoskit.cluster import LocalCluster, wait_for

WORKER_NODES = ("w1", "w2", "w3")


class Driver:
    """fn() in a thread: the step the scenario watches and faults."""

    def __init__(self, fn: Callable[[], Any]):
        self.result: Any = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        self.started = time.monotonic()
        self._t = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._t.start()

    def _run(self, fn) -> None:
        try:
            self.result = fn()
        except BaseException as e:      # noqa: BLE001 - handed to the caller by join()
            self.error = e
        self.ended = time.monotonic()

    def done(self) -> bool:
        return self.ended is not None

    def join(self, timeout_s: float) -> Any:
        self._t.join(timeout_s)
        if self._t.is_alive():
            raise TimeoutError(f"the step did not end within {timeout_s:.0f} s of the fault (a hang)")
        if self.error is not None:
            raise self.error
        return self.result


def kill_at_gate(cluster: LocalCluster, gate: Path, driver: Driver, timeout_s: float = 300) -> tuple[str, float]:
    """Wait until a worker process is held at `gate`, SIGKILL its node, open the gate (the
    batch goes to a live node). Returns (node name, time of the kill)."""
    try:
        pid = wait_for(lambda: faults.reached(gate) or driver.done(), timeout_s, "a process at the gate")
        if driver.done():
            raise RuntimeError(f"the step ended before reaching the gate: {driver.error or 'no error'}")
        victim = cluster.node_of_pid(pid)
        if victim not in WORKER_NODES:
            raise RuntimeError(f"the gate held pid {pid}, not a worker node's process ({victim})")
        return victim, cluster.kill_node(victim)
    finally:
        faults.release(gate)


def kill_at_running_task(cluster: LocalCluster, task: str, driver: Driver, timeout_s: float = 300) -> tuple[str, float]:
    """Wait until Ray reports a `task` (e.g. "EvalWorker.run") running on a worker node, SIGKILL that node."""
    running = wait_for(lambda: [t for t in cluster.running_tasks(task) if t["node"] in WORKER_NODES]
                       or driver.done(), timeout_s, f"{task} running on a worker node")
    if running is True:
        raise RuntimeError(f"the step ended before {task} was seen running: {driver.error or 'no error'}")
    victim = running[0]["node"]
    return victim, cluster.kill_node(victim)


# ---- what the outputs hold ---------------------------------------------------------------

def shard_rows(shards: Path) -> dict:
    """{"rows": id -> tokens over every file the manifest lists, "duplicates": ids seen twice,
    "manifest", "unlisted": files in the run's folder the manifest does not list,
    "unreadable": listed files that are not whole Parquet files}."""
    import pyarrow.parquet as pq
    m = json.loads((shards / "manifest.json").read_text())
    listed = [f for s in m["splits"].values() for f in s["files"]]
    rows, dupes, unreadable = {}, 0, []
    for f in listed:
        try:
            table = pq.read_table(shards / f, columns=["id", "tokens"])
        except Exception:               # noqa: BLE001 - counted: a partial file
            unreadable.append(f)
            continue
        for r in table.to_pylist():
            dupes += r["id"] in rows
            rows[r["id"]] = r["tokens"]
    on_disk = {str(p.relative_to(shards)) for p in (shards / m["shards_dir"]).rglob("*") if p.is_file()}
    return {"rows": rows, "duplicates": dupes, "manifest": m, "unlisted": sorted(on_disk - set(listed)),
            "unreadable": unreadable}


def compare_shards(got: dict, ref: dict) -> dict:
    """Rows lost / duplicated / changed against the unfaulted run, and whether the manifests
    agree on what they record about the inputs."""
    # failures by file (a decoder's message may name an object's address, different every run)
    keys = ("num_inputs", "input_fingerprint")
    failed = [sorted(f["source_uri"] for f in x["manifest"]["failed"]) for x in (got, ref)]
    return {"rows_lost": len(set(ref["rows"]) - set(got["rows"])), "rows_duplicated": got["duplicates"],
            "rows_extra": len(set(got["rows"]) - set(ref["rows"])),
            "rows_changed": sum(got["rows"][k] != v for k, v in ref["rows"].items() if k in got["rows"]),
            "partial_files": len(got["unlisted"]) + len(got["unreadable"]),
            "manifest_equal": {k: got["manifest"][k] for k in keys} == {k: ref["manifest"][k] for k in keys}
            and failed[0] == failed[1] and {s: v["per_label"] for s, v in got["manifest"]["splits"].items()}
            == {s: v["per_label"] for s, v in ref["manifest"]["splits"].items()}}


def summary_results(out: Path) -> dict:
    """An evaluation's summary.json without its measured decode times (wall clock) and the
    paths of its files (under each run's own output folder)."""
    def drop(x):
        if isinstance(x, dict):
            return {k: drop(v) for k, v in x.items() if "seconds" not in k and k != "files"}
        return [drop(v) for v in x] if isinstance(x, list) else x
    return drop(json.loads((out / "summary.json").read_text()))


# ---- the scenarios ----------------------------------------------------------------------

def tokenize_node_killed(cluster: LocalCluster, input_url: str, out: Path, tokenizer: str, cfg,
                         held_file_glob: str) -> dict:
    """Tokenize with the node whose tokenizer actor holds a file matching `held_file_glob`
    SIGKILLed while it holds it. Returns the victim, seconds from the kill to the step's end,
    the step's seconds."""
    from pipelines.tokenize import tokenize_to_shards
    gate = faults.hold(cluster.plan, held_file_glob)
    driver = Driver(lambda: tokenize_to_shards(input_url, str(out), tokenizer, cfg))
    victim, killed = kill_at_gate(cluster, gate, driver)
    driver.join(600)
    return {"victim": victim, "recovery_s": driver.ended - killed, "step_s": driver.ended - driver.started}


def evaluate_node_killed(cluster: LocalCluster, cfg, out: Path, checkpoint: str, **kw) -> dict:
    """Evaluate with the node of the first evaluation batch seen running SIGKILLed."""
    from pipelines.evaluate import evaluate
    driver = Driver(lambda: evaluate(cfg, str(out), checkpoint, **kw))
    victim, killed = kill_at_running_task(cluster, "EvalWorker.run", driver)
    res = driver.join(600)
    return {"victim": victim, "recovery_s": driver.ended - killed, "step_s": driver.ended - driver.started,
            "result": res}


def tokenize_write_broken(cluster: LocalCluster, input_url: str, out: Path, tokenizer: str, cfg) -> dict:
    """Tokenize to chaosfs://out with the first training shard's write broken mid-file."""
    from pipelines.tokenize import tokenize_to_shards
    faults.arm(cluster.plan, f"{out}/shards-*/train/*.parquet")
    t0 = time.monotonic()
    tokenize_to_shards(input_url, f"chaosfs://{out}", tokenizer, cfg)
    hits = [h for h in faults.hits(cluster.plan) if h["path"].startswith(str(out))]
    return {"broken_writes": hits, "broken_on": [cluster.node_of_pid(h["pid"]) for h in hits],
            "step_s": time.monotonic() - t0}
