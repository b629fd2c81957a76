"""What a person watching a `nestgen` command reads, and where everything else goes.

`nestgen run` prints a line per DAG step as it starts and ends, a progress bar per long step
and a closing summary (`say`; `bar`, `RemoteBar`, or `stream()` as a bar's file). Unless `--verbose`, everything else this process
writes to its stdout and stderr (Ray's logs, Ray Data's progress bars, worker output that
Ray forwards, library warnings, tracebacks) goes to the run's log file instead: `quiet`
points file descriptors 1 and 2 at the log (so output of threads, C++ code and child
processes follows) and keeps copies of the terminal's for `say` and `bar`.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

from tqdm import tqdm

_out = None          # the terminal's stdout and stderr while `quiet` holds fds 1 and 2
_err = None


def say(line: str = "") -> None:
    """A line on the console (the terminal, also while `quiet` sends the rest to the log)."""
    print(line, file=_out or sys.stdout, flush=True)


def warn(line: str) -> None:
    """A line on the console's error stream (one-line errors of the command line)."""
    print(line, file=_err or sys.stderr, flush=True)


def stream():
    """The console's error stream, for a progress bar made elsewhere (tqdm's `file`)."""
    return _err or sys.stderr


def bar(desc: str, total: int | None = None, unit: str = "it", initial: int = 0) -> tqdm:
    """A progress bar on the console's error stream (step/total, rate, ETA). Off a terminal
    (a `ray job` log, a pipe) it redraws every 30 s instead of every 0.5 s."""
    out = stream()
    tty = out.isatty()
    return tqdm(total=total, initial=initial, desc=f"  {desc}", unit=unit, file=out, leave=False,
                mininterval=0.5 if tty else 30, dynamic_ncols=tty, ncols=None if tty else 100)


@contextmanager
def quiet(log_path: str | None):
    """While active, fds 1 and 2 write to log_path (appended; None: stay on the terminal)."""
    global _out, _err
    if log_path is None or _out is not None:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    _out = os.fdopen(os.dup(1), "w", buffering=1, closefd=True)
    _err = os.fdopen(os.dup(2), "w", buffering=1, closefd=True)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out, err, _out, _err = _out, _err, None, None
        out.close()
        err.close()


class RemoteBar:
    """A progress bar fed from Ray workers (Ray Train loops, Ray Data actors): pass `feed`
    to them; they call `feed.add.remote(n)` or `feed.set.remote(done, total, **shown)`
    (fire and forget); the driver polls the feed every second and moves the bar."""

    def __init__(self, desc: str, unit: str = "it", total: int | None = None):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        # On the driver's node: a feed elsewhere dies with its node, and a worker that feeds it
        # (a Ray Train rank restored after a node failure) would fail on the dead actor.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.feed = ray.remote(num_cpus=0, scheduling_strategy=here)(_Feed).remote()
        self.bar = bar(desc, total, unit)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "RemoteBar":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import ray
        self._stop.set()
        self._thread.join()
        self._show()
        self.bar.close()
        ray.kill(self.feed)

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            self._show()

    def _show(self) -> None:
        import ray
        try:
            done, total, shown = ray.get(self.feed.state.remote(), timeout=10)
        except Exception:            # noqa: BLE001 - a missed refresh; the next poll retries
            return
        if total is not None and total != self.bar.total:
            self.bar.total = total
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(done - self.bar.n)


class _Feed:
    """The actor behind RemoteBar: the latest count, total and values to show."""

    def __init__(self):
        self.done, self.total, self.shown = 0, None, {}

    def add(self, n: int = 1) -> None:
        self.done += n

    def set(self, done: int, total: int | None = None, **shown) -> None:
        self.done, self.total = done, total if total is not None else self.total
        self.shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in shown.items()}

    def state(self):
        return self.done, self.total, self.shown
