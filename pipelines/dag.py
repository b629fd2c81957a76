"""A small durable DAG runner (`ray.workflow` is gone and `ray.dag` execution is deprecated).

A step declares its upstream steps, the config it depends on, and a function that writes
its outputs under a folder it is given. Its *fingerprint* hashes that config with the
upstream fingerprints (and the step's own input listing, e.g. raw files), so it changes
exactly when something the step reads changes. Step folders are named by fingerprint
(`<output>/<step>-<fp12>/`): a changed config never resumes or overwrites another
config's outputs, and a killed step resumes in its own folder (Ray Train continues from
its last checkpoint there). A step is done when `<folder>/_COMPLETE.json` exists, written
last, holding its outputs: a re-run skips done steps and runs from the first undone one.
Transient failures are retried with backoff; input and config errors (ValueError,
TypeError, KeyError, FileNotFoundError) fail at once, also when they come wrapped (a Ray
Train WorkerGroupError holding a worker's ConfigError: Ray Train already spent its own
max_failures on it).
Under a lease on the output folder (pipelines.lease), each step attempt starts and its
marker (and the run's dag.json) is written only after checking the lease; a lost lease fails
the step at once.

The runner executes steps in the driver in dependency order; the steps fan out on the
cluster themselves (Ray Data, Ray Train, actors, Serve). With `parallel` > 1, up to that many
steps whose upstream steps are complete run at once (each in a driver thread), so
independent branches (a train -> evaluate branch per training seed) share the cluster, each
waiting in Ray's queue for the resources it asks for; after a failure, running steps finish
and record their outputs and nothing new starts.
"""
from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from nestgen.storage import exists, join, read_json, write_json_atomic
from pipelines.console import say
from pipelines.lease import LeaseLost, check

MARKER = "_COMPLETE.json"
DAG_FILE = "dag.json"
PERMANENT = (ValueError, TypeError, KeyError, FileNotFoundError, NotImplementedError)


@dataclass
class StepContext:
    folder: str                              # where this step writes (under the run's output URL)
    inputs: dict[str, dict]                  # upstream step name -> its outputs
    parent_run_id: str | None                # the pipeline's MLflow run
    attempt: int = 1
    fingerprint: str = ""                    # keys the step's own MLflow run: a retry or resume reuses it


@dataclass
class Step:
    name: str
    run: Callable[[StepContext], dict]       # returns JSON-able outputs
    deps: list[str] = field(default_factory=list)
    config: Callable[[], Any] = lambda: None  # what the outputs depend on (JSON-able)
    input_listing: Callable[[], str] = lambda: ""   # e.g. a hash of raw files the step reads
    about: str = ""


@dataclass
class StepRecord:
    name: str
    deps: list[str]
    fingerprint: str
    folder: str
    status: str = "pending"                  # pending | skipped | done | failed | not_run
    attempts: int = 0
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)
    error: str = ""
    mlflow_run_id: str | None = None


class StepFailed(RuntimeError):
    pass


def _now() -> str:
    return time.strftime("%H:%M:%S")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def causes(e: BaseException):
    """e and every exception it wraps: __cause__, a Ray Train WorkerGroupError's per-worker
    failures (each wrapped with its traceback string as `_base_exc`), a ControllerError's
    controller_failure, a RayTaskError's cause."""
    seen, stack = set(), [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack.extend((getattr(x, "worker_failures", None) or {}).values())
        stack.extend(getattr(x, a, None) for a in ("_base_exc", "controller_failure", "cause", "__cause__"))


def permanent_cause(e: BaseException) -> BaseException | None:
    """The input/config error inside e, if any: retrying would fail the same way."""
    return next((c for c in causes(e) if isinstance(c, PERMANENT)), None)


def topological(steps: list[Step]) -> list[Step]:
    by_name = {s.name: s for s in steps}
    order, seen, visiting = [], set(), set()

    def visit(s: Step) -> None:
        if s.name in seen:
            return
        if s.name in visiting:
            raise ValueError(f"the DAG has a cycle through {s.name!r}")
        visiting.add(s.name)
        for d in s.deps:
            if d not in by_name:
                raise ValueError(f"step {s.name!r} depends on unknown step {d!r}")
            visit(by_name[d])
        visiting.discard(s.name)
        seen.add(s.name)
        order.append(s)
    for s in steps:
        visit(s)
    return order


def fingerprints(steps: list[Step]) -> dict[str, str]:
    fps: dict[str, str] = {}
    for s in topological(steps):
        h = hashlib.sha256(s.name.encode())
        h.update(json.dumps(s.config(), sort_keys=True, default=str).encode())
        h.update(s.input_listing().encode())
        for d in sorted(s.deps):
            h.update(fps[d].encode())
        fps[s.name] = h.hexdigest()
    return fps


def downstream(steps: list[Step], name: str) -> set[str]:
    out = {name}
    for s in topological(steps):
        if any(d in out for d in s.deps):
            out.add(s.name)
    return out


class Runner:
    """Plans and runs a DAG under `output_url`; `tracker` (optional) mirrors it in MLflow."""

    def __init__(self, steps: list[Step], output_url: str, tracker=None, retries: int = 2,
                 backoff_s: float = 5.0, parallel: int = 1):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.steps = topological(steps)
        self.output_url = output_url.rstrip("/")
        self.tracker, self.retries, self.backoff_s, self.parallel = tracker, retries, backoff_s, parallel
        fps = fingerprints(self.steps)
        self.records = {s.name: StepRecord(s.name, s.deps, fps[s.name], join(self.output_url, f"{s.name}-{fps[s.name][:12]}"))
                        for s in self.steps}

    def plan(self, from_step: str | None = None, only: str | None = None) -> dict[str, str]:
        """step -> 'skip' (complete, unchanged) | 'run' | 'not selected'."""
        for name in (from_step, only):
            if name and name not in self.records:
                raise ValueError(f"unknown step {name!r}; steps: {[s.name for s in self.steps]}")
        # --from re-runs a step and what depends on it; --only runs exactly one step, done or not
        forced = downstream(self.steps, from_step) if from_step else ({only} if only else set())
        out = {}
        for s in self.steps:
            r = self.records[s.name]
            if only and s.name != only:
                out[s.name] = "not selected"
            elif s.name in forced:
                out[s.name] = "run"
            else:
                out[s.name] = "skip" if exists(join(r.folder, MARKER)) else "run"
        return out

    def describe(self, plan: dict[str, str]) -> str:
        lines = [f"DAG under {self.output_url}:"]
        deps = {s.name: f" <- {', '.join(s.deps)}" if s.deps else "" for s in self.steps}
        wn, wd = max(10, *map(len, deps)), max(28, *map(len, deps.values()))
        for s in self.steps:
            lines.append(f"  {s.name:{wn}s}{deps[s.name]:{wd}s} {plan[s.name]:13s} {self.records[s.name].folder}")
        return "\n".join(lines)

    def run(self, from_step: str | None = None, only: str | None = None) -> dict[str, StepRecord]:
        plan = self.plan(from_step, only)
        print(self.describe(plan), flush=True)             # the run's log (the console has a line per step)
        if self.tracker:
            self.tracker.start(self)
        failed: StepFailed | None = None
        pending, running = list(self.steps), set()
        finished: queue.Queue = queue.Queue()            # (step name, StepFailed or None) as steps end
        try:
            while True:
                for s in list(pending):                  # in dependency order: what can start now
                    if failed:
                        break
                    waiting = {p.name for p in pending} | running
                    if any(d in waiting for d in s.deps) or (plan[s.name] == "run" and len(running) >= self.parallel):
                        continue
                    pending.remove(s)
                    r = self.records[s.name]
                    if plan[s.name] == "not selected":
                        self._load_marker(r)
                        continue
                    missing = [d for d in s.deps if self.records[d].status not in ("done", "skipped")]
                    if missing:
                        raise StepFailed(f"step {s.name!r} needs {missing} to be complete first "
                                         f"(run without --only, or with --only {missing[0]})")
                    if plan[s.name] == "skip":
                        self._load_marker(r)
                        say(f"[{_now()}] {s.name:10s} up to date, skipped   -> {r.folder}")
                        if self.tracker:
                            self.tracker.step(r)
                        continue
                    running.add(s.name)
                    self._launch(s, r, finished)
                if not running:
                    break
                name, error = finished.get()
                running.discard(name)
                failed = failed or error
                if self.tracker:
                    self.tracker.step(self.records[name])
            for s in pending:                            # after a failure: never started
                r = self.records[s.name]
                r.status = "not_run"
                if plan[s.name] == "not selected":
                    self._load_marker(r)
        finally:
            try:
                check(self.output_url)           # a writer that lost the folder leaves dag.json to its successor
                write_json_atomic(join(self.output_url, DAG_FILE), self.summary())
            finally:
                if self.tracker:
                    self.tracker.finish(self, failed)
        if failed:
            raise failed
        return self.records

    def _load_marker(self, r: StepRecord) -> None:
        """A complete step's outputs from its marker (status skipped); nothing if incomplete."""
        if exists(join(r.folder, MARKER)):
            r.outputs, r.status = read_json(join(r.folder, MARKER))["outputs"], "skipped"

    def _launch(self, s: Step, r: StepRecord, finished: queue.Queue) -> None:
        """Run the step and put (name, StepFailed or None) on `finished`. One step at a time runs
        here, in the caller's thread (Ctrl-C reaches it); with `parallel` > 1 each runs in its
        own daemon thread, so independent branches (the seeds' train -> evaluate) share the
        cluster, and a Ctrl-C ends the run without waiting for them."""
        def work() -> None:
            try:
                self._run_step(s, r)
                finished.put((s.name, None))
            except StepFailed as e:
                finished.put((s.name, e))
            except BaseException as e:   # noqa: BLE001 - a step thread must report back, or the run waits for ever
                if self.parallel == 1:
                    raise                    # Ctrl-C in the caller's thread ends the run as it always did
                r.status, r.error = "failed", f"{type(e).__name__}: {e}"
                finished.put((s.name, StepFailed(f"step {s.name!r} stopped: {r.error}")))
        if self.parallel == 1:
            work()
        else:
            threading.Thread(target=work, name=f"step-{s.name}", daemon=True).start()

    def _run_step(self, s: Step, r: StepRecord) -> None:
        inputs = {d: self.records[d].outputs for d in s.deps}
        for attempt in range(1, self.retries + 2):
            r.attempts = attempt
            again = f" (attempt {attempt})" if attempt > 1 else ""
            say(f"[{_now()}] {s.name:10s} started{again}: {s.about}")
            print(f"[dag] {s.name}: running (attempt {attempt}) -> {r.folder}", flush=True)
            t0 = time.perf_counter()
            try:
                check(r.folder)                     # a step boundary: a lost lease starts nothing more
                parent = self.tracker.step_parent(r) if self.tracker else None
                outputs = s.run(StepContext(r.folder, inputs, parent, attempt, r.fingerprint)) or {}
                r.seconds += time.perf_counter() - t0
                r.outputs, r.status, r.error = outputs, "done", ""
                check(r.folder)                     # the marker commits the step
                write_json_atomic(join(r.folder, MARKER), {
                    "step": s.name, "fingerprint": r.fingerprint, "outputs": outputs,
                    "seconds": r.seconds, "attempts": attempt, "finished_at": time.time()})
                say(f"[{_now()}] {s.name:10s} done in {_duration(r.seconds)}  -> {r.folder}")
                return
            except Exception as e:          # noqa: BLE001 - classified below
                r.seconds += time.perf_counter() - t0
                r.error = f"{type(e).__name__}: {e}"
                permanent = permanent_cause(e)
                if permanent is not None and permanent is not e:
                    r.error = f"{type(permanent).__name__}: {permanent} (inside {type(e).__name__})"
                lost = next((c for c in causes(e) if isinstance(c, LeaseLost)), None)
                if lost is not None:                # another writer owns the folder now: a retry can't commit
                    r.error = f"LeaseLost: {lost}"
                traceback.print_exc()
                final = lost is not None or permanent is not None or attempt > self.retries
                wait = self.backoff_s * 2 ** (attempt - 1)
                say(f"[{_now()}] {s.name:10s} attempt {attempt} failed: {r.error.splitlines()[0][:300]}"
                    + ("" if final else f"; retrying in {wait:.0f} s"))
                if final:
                    r.status = "failed"
                    why = ("the output folder's lease was lost, not retried" if lost is not None else
                           "input/config error, not retried" if permanent is not None else f"after {attempt} attempts")
                    raise StepFailed(f"step {s.name!r} failed ({why}): {r.error}") from e
                time.sleep(wait)

    def summary(self) -> dict:
        return {"output_url": self.output_url,
                "steps": [{k: v for k, v in vars(self.records[s.name]).items()} | {"about": s.about}
                          for s in self.steps]}
