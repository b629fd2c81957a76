"""Transient storage faults that cross processes: chaosfs:///abs/path is the local disk, except
that the writes a plan names break after half of their bytes with ConnectionResetError (what
fsspec raises for a connection dropped mid-upload), in whichever process makes them: the
driver, a Ray Data write task or a Ray Train worker on another node.

The plan is a folder: `arm(plan, "*/shards-*/train/*.parquet")` makes the first write whose
path matches break (each armed break happens once, claimed with O_EXCL across processes);
`hits(plan)` lists the writes that broke. `hold(plan, "*/in/*/0003.png")` is a point to kill
at: the first other process that opens a matching file for reading says so (`reached`: its
pid) and waits until `release` (a batch is then in that process's hands, mid-step). A filesystem instance carries its plan folder, so
one pickled into a Ray task (pipelines.arrow_fs wraps it for Arrow) breaks the same way there;
chaosfs:// URLs opened in this process take the folder from $CHAOSKIT_FAULTS.
"""
from __future__ import annotations

import errno
import fnmatch
import json
import os
import time
from pathlib import Path

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

PLAN_ENV = "CHAOSKIT_FAULTS"
HOLD_S = 600                 # a held reader goes on by itself after this (a test that died)


def arm(plan: str | os.PathLike, pattern: str, times: int = 1) -> None:
    """Break the next `times` writes whose local path matches the glob `pattern`."""
    plan = Path(plan)
    plan.mkdir(parents=True, exist_ok=True)
    n = len(list(plan.glob("rule-*.json")))
    (plan / f"rule-{n}.json").write_text(json.dumps({"pattern": pattern, "times": times}))


def hits(plan: str | os.PathLike) -> list[dict]:
    """The writes that broke: [{"path", "pid"}], in no particular order."""
    return [json.loads(p.read_text()) for p in sorted(Path(plan).glob("rule-*.hit*"))]


def hold(plan: str | os.PathLike, pattern: str) -> Path:
    """Hold the first read of a file matching `pattern` by another process; returns the
    gate (its `reached` file appears with the reader's pid)."""
    gate = Path(plan) / f"hold-{len(list(Path(plan).glob('hold-*.json')))}"
    gate.parent.mkdir(parents=True, exist_ok=True)
    gate.with_suffix(".json").write_text(json.dumps({"pattern": pattern, "armed_by": os.getpid()}))
    return gate


def reached(gate: Path) -> int | None:
    """The pid of the process held at `gate`, once one is."""
    f = gate.with_suffix(".reached")
    return json.loads(f.read_text())["pid"] if f.exists() and f.stat().st_size else None


def release(gate: Path) -> None:
    gate.with_suffix(".release").touch()


def _wait_at_gates(plan: str, path: str) -> None:
    for rule in sorted(Path(plan).glob("hold-*.json")):
        r = json.loads(rule.read_text())
        if r["armed_by"] == os.getpid() or not fnmatch.fnmatch(path, r["pattern"]):
            continue
        try:
            fd = os.open(rule.with_suffix(".reached"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue                 # held once already
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), "path": path}))
        deadline = time.monotonic() + HOLD_S
        while not rule.with_suffix(".release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def _claim(plan: str, path: str) -> bool:
    for rule in sorted(Path(plan).glob("rule-*.json")):
        r = json.loads(rule.read_text())
        if not fnmatch.fnmatch(path, r["pattern"]):
            continue
        for k in range(r["times"]):
            try:
                fd = os.open(f"{rule.with_suffix('')}.hit{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"path": path, "pid": os.getpid()}))
            return True
    return False


def _reset(path: str) -> OSError:
    return ConnectionResetError(errno.ECONNRESET, f"injected: connection reset mid-upload of {path}")


class _BreaksMidFile:
    """A file open for writing: the first write keeps half of its bytes, then fails."""

    def __init__(self, f, path: str):
        self._f, self._path = f, path

    def write(self, data):
        self._f.write(data[:len(data) // 2])
        self._f.flush()
        raise _reset(self._path)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class FlakyFileSystem(DirFileSystem):
    """The local filesystem under chaosfs://, breaking the writes its plan names mid-file."""
    protocol = "chaosfs"

    def __init__(self, plan: str | None = None, **kwargs):
        super().__init__(path="/", fs=LocalFileSystem(), **kwargs)
        self.path = ""               # no prefix: chaosfs:///a/b is /a/b
        self.plan = plan or os.environ[PLAN_ENV]

    def open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            _wait_at_gates(self.plan, self._strip_protocol(path))
        f = super().open(path, mode, **kwargs)
        return _BreaksMidFile(f, path) if "r" not in mode and _claim(self.plan, self._strip_protocol(path)) else f

    def pipe_file(self, path, value, **kwargs):
        if _claim(self.plan, self._strip_protocol(path)):
            super().pipe_file(path, value[:len(value) // 2], **kwargs)
            raise _reset(path)
        return super().pipe_file(path, value, **kwargs)

    def put_file(self, lpath, rpath, **kwargs):
        if _claim(self.plan, self._strip_protocol(rpath)):
            with open(lpath, "rb") as f:
                super().pipe_file(rpath, f.read()[:os.path.getsize(lpath) // 2])
            raise _reset(rpath)
        return super().put_file(lpath, rpath, **kwargs)


def register() -> None:
    """Make chaosfs:// known in this process: a Ray job's workers call it at start
    (runtime_env={"worker_process_setup_hook": "chaoskit.faults.register"})."""
    fsspec.register_implementation("chaosfs", FlakyFileSystem, clobber=True)


register()
