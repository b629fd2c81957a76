"""What a person watching a `nestgen` command reads, and where everything else goes.

`nestgen run` prints a line per DAG step as it starts and ends, a progress bar per long step
and a closing summary (`say`; `bar`, `RemoteBar`, or `stream()` as a bar's file;
`closing_summary`). Unless `--verbose`, everything else this process
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

from nestgen.storage import join, read_json
from pipelines.cli_args import runnable
from pipelines.config import RunConfig
from pipelines.mlflow_runs import UI_MODE_HINT

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


def quality_table(summary_url: str) -> list[str]:
    """The evaluation's variants: GFLOPs, saving, quality with its 95% interval, the claim
    check (change against the baseline with its paired interval, and the verdict) and
    whether on the Pareto front."""
    from nestgen.evaluation.report import format_value
    s = read_json(summary_url)
    metric, threshold = s["metric"], s["claim"]["threshold"]
    rows = [f"quality vs GFLOPs ({metric}, {'lower' if s['lower_is_better'] else 'higher'} is better; 95% bootstrap "
            f"intervals over {s['num_samples']} samples; * on the Pareto front):",
            f"  {'variant':36s} {'GFLOPs':>7s} {'saving':>7s}  {metric + ' [95%]':22s} {'change [95%]':24s} "
            f"{f'within {100 * threshold:g}%':10s} pareto"]
    for v in s["variants"]:
        iv, claim = v.get("intervals", {}).get(metric, {}), v.get("claim")
        q = format_value(v[metric]) + (f" [{format_value(iv['lo'])}, {format_value(iv['hi'])}]" if "lo" in iv else "")
        change = (f"{100 * claim['change']:+.1f}% [{100 * claim['lo']:+.1f}, {100 * claim['hi']:+.1f}]"
                  if claim else "")
        rows.append(f"  {v['variant']:36s} {v['gflops_per_sample']:7.3f} {v['gflops_saving']:6.2f}x  {q:22s} "
                    f"{change:24s} {claim['verdict'] if claim else '':10s} {'*' if v.get('pareto') else ''}")
    rows.append(f"  within {100 * threshold:g}%: yes = the whole interval of the change is within it, no = beyond "
                "it, undecided = it straddles it")
    return rows


def closing_summary(cfg: RunConfig, out: dict[str, dict], output_url: str, seconds: float, runs_page: str,
                    served: str) -> str:
    """What `nestgen run` prints when it ends: results, where the files are, and the next
    commands, each as it can be typed in a new shell (pipelines.cli_args.runnable). `out`:
    each step's outputs by step name; `runs_page`: the MLflow runs table ("" when unknown);
    `served`: the train step whose checkpoint the serve hint names."""
    lines = [f"\npipeline finished in {seconds / 60:.1f} min; outputs under {output_url} (dag.json lists them)"]
    ev = out.get("evaluate") or {}
    if ev:
        lines += quality_table(ev["summary_url"])
        lines.append(f"  plot: {ev['plot_url']}")
        lines.append(f"  samples: {join(ev['summary_url'].rsplit('/', 1)[0], 'samples')}/   summary: {ev['summary_url']}")
    agg = out.get("seeds") or {}
    if agg:
        lines.append(f"over training seeds {agg['seeds']} (mean [95% t interval, N-1 dof]; per-seed values in "
                     f"{agg['summary_url']}): baseline {agg['metric']} {agg['baseline_quality']:.4g} "
                     f"[{agg['baseline_quality_lo']:.4g}, {agg['baseline_quality_hi']:.4g}]")
        lines += [f"  {line}" for line in agg["claims"]]
    if out.get("serve"):
        lines.append(f"  served samples: {out['serve'].get('sample_baseline')}, {out['serve'].get('sample_magnets')}")
    nestgen, mlflow = runnable("nestgen"), runnable("mlflow")
    lines.append("next:")
    uri = cfg.mlflow.resolved_uri()
    if uri.startswith(("http://", "https://")):
        lines.append(f"  the runs page:    {runs_page}")
    else:
        lines.append(f"  browse the runs:  {mlflow} ui --backend-store-uri {uri} --host 127.0.0.1"
                     f" --port 5000   (then open {runs_page or 'http://127.0.0.1:5000'})")
    lines.append(f"        or, {UI_MODE_HINT}")
    ckpt = (out.get(served) or {}).get("checkpoint_url")
    if ckpt:
        fmt = "mp4" if cfg.model.is_video else "png"
        given = " --condition GIVEN.mp4" if cfg.train.cond_tokens else ""
        lines.append(f"  serve the model:  {nestgen} serve configs/serve_digits.yaml --checkpoint {ckpt}")
        lines.append(f"  then, in another shell:  {nestgen} generate --url http://127.0.0.1:8000 --class 3 "
                     f"--schedule magnets{given} --out sample.{fmt}")
        lines.append("        or: curl -s -X POST http://127.0.0.1:8000/v1/generate -H 'content-type: application/json'"
                     f" -d '{{\"class_label\": 3, \"schedule\": \"magnets\", \"format\": \"{fmt}\"}}'")
    return "\n".join(lines)
