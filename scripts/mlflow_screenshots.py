"""Screenshots of the MLflow UI as a person sees it after `make demo` (`make screenshots`):

    python -m scripts.mlflow_screenshots --db mlflow.db --out docs/images

Starts `mlflow ui` on 127.0.0.1 on a copy of the database (the original is never written),
loads pages in headless Chromium (Debian's `chromium` package), driven over a pipe (no
DevTools port that another local user could connect to), and writes, as PNGs under 100 kB:
  mlflow_runs.png       the experiment's runs table: the newest pipeline parent run expanded
                        to its step runs, the evaluate step expanded to its variant runs;
  mlflow_artifacts.png  the evaluate step run's artifacts, its quality-vs-GFLOPs plot open;
  mlflow_variant.png    the MaGNeTS variant run's (cached when evaluated so) logged sample grid.
Each page is taken once it shows the runs it should, after the clicks a person would make
(expanding parent runs, closing the assistant panel). The table's metric columns are a
shared view state: an experiment tag `mlflow.sharedViewState.<key>` (in the copy) that the
UI applies when the URL names the key. The server and the browser are stopped by process id.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from pipelines.ray_runtime import free_port
from scripts.small_png import save_small_png

VIEW_KEY = "readme"
FIRST_COLUMNS = ["gflops_per_sample", "gflops_saving"]
CHROMIUM_FLAGS = ["--headless", "--remote-debugging-pipe", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# Chromium refuses to start as root with its sandbox on (crbug.com/638180); as any other user
# (measured: Debian's chromium 156 as `nobody` in this container) it runs sandboxed.
ROOT_ONLY_FLAGS = ["--no-sandbox"]


def stop_group(pid: int) -> None:
    """Stop a process started in a session of its own (start_new_session / setsid), and
    everything it started, by its process group: SIGTERM, then SIGKILL after 30 s; reaps it."""
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.1)
    except (ProcessLookupError, ChildProcessError):    # it had exited (and Popen.poll reaped it)
        pass


@contextmanager
def mlflow_process(args: list[str], log: Path, ready_path: str = "/health", env: dict | None = None,
                   timeout: float = 300):
    """`mlflow <args>` (ui, server, models serve) listening on 127.0.0.1 and a free port, in a
    session of its own, output to `log`; yields its URL once GET <url><ready_path> answers 200
    (an error with the log's end if it exits or times out first); stopped by process group.
    `timeout` bounds a hang, not speed: a fresh database is migrated at start, which took over
    two minutes on a 2-core machine under load (the wait ends as soon as it answers)."""
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), *args, "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{url}{ready_path}", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow {args[0]} did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc.pid)


def mlflow_ui(db: Path, log: Path, timeout: float = 300):
    """`mlflow ui` on sqlite:///db (a context manager yielding its URL, as mlflow_process)."""
    return mlflow_process(["ui", "--backend-store-uri", f"sqlite:///{db.resolve()}", "--workers", "1"], log,
                          timeout=timeout)


def ajax(url: str, path: str, body: dict | None = None) -> dict:
    """The MLflow UI's own API calls: GET (query) or POST (JSON body) under /ajax-api/2.0/mlflow/."""
    req = urllib.request.Request(f"{url}/ajax-api/2.0/mlflow/{path}",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))


@dataclass
class PipelineRuns:
    experiment_id: str
    parent: dict                     # the pipeline's parent run
    steps: dict[str, dict]           # nestgen.step tag -> step run
    variants: list[dict]             # the evaluate step's child runs, one per decode variant


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def search_runs(url: str, experiment_id: str, filter_string: str) -> list[dict]:
    body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 1000,
            "order_by": ["attributes.start_time DESC"]}
    return ajax(url, "runs/search", body).get("runs", [])


def pipeline_runs(url: str, experiment: str | None = None) -> PipelineRuns:
    """The newest pipeline parent run (of `experiment` when named), its step runs and the
    evaluate step's variant runs, as the UI's runs page reads them."""
    if experiment:
        exps = [ajax(url, f"experiments/get-by-name?experiment_name={urllib.parse.quote(experiment)}")["experiment"]]
    else:
        exps = ajax(url, "experiments/search", {"max_results": 1000})["experiments"]
    parents = [r for e in exps for r in search_runs(url, e["experiment_id"], "tags.`nestgen.step` = 'pipeline'")]
    if not parents:
        raise SystemExit(f"no pipeline run in {url}: run `nestgen run` (make demo) first")
    parent = max(parents, key=lambda r: int(r["info"]["start_time"]))
    exp_id = parent["info"]["experiment_id"]
    kids = search_runs(url, exp_id, f"tags.mlflow.parentRunId = '{parent['info']['run_id']}'")
    steps = {tags(k).get("nestgen.step", k["info"]["run_name"]): k for k in kids}
    evaluate = steps.get("evaluate")
    variants = [] if evaluate is None else search_runs(url, exp_id, f"tags.mlflow.parentRunId = "
                                                                    f"'{evaluate['info']['run_id']}'")
    return PipelineRuns(exp_id, parent, steps, variants)


class DevToolsPipe:
    """Chromium's DevTools protocol over the pipe of `--remote-debugging-pipe`: Chromium reads
    commands on its fd 3 and writes replies and events on its fd 4, each message a JSON text
    ended by a NUL byte. Only this process holds the other ends: nothing listens on a port."""

    def __init__(self, commands: int, replies: int, timeout: float):
        self.commands, self.replies, self.timeout = commands, replies, timeout
        self.pending = b""
        self.ids = itertools.count(1)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                raise TimeoutError(f"no DevTools reply from Chromium within {self.timeout:.0f} s")
            chunk = os.read(self.replies, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe (it exited)")
            self.pending += chunk
        message, self.pending = self.pending.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Runs one command (on the page `session` when given) and returns its result; events
        that arrive meanwhile are dropped."""
        i = next(self.ids)
        data = json.dumps({"id": i, "method": method, "params": params,
                           **({"sessionId": session} if session else {})}).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self.commands, data):]
        except BrokenPipeError:            # it exited before reading this command
            raise RuntimeError("Chromium closed its DevTools pipe (it exited)") from None
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == i:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]


def _above_stdio(fd: int) -> int:
    """fd moved to a number above 4 (close-on-exec), so that placing the two pipe ends on 3
    and 4 in the child cannot overwrite one with the other."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return moved


def spawn_with_pipe(argv: list[str], log: Path) -> tuple[int, int, int]:
    """Starts argv[0] (a path) in a new session with a command pipe on its fd 3 and a reply
    pipe on its fd 4, stdout and stderr to `log`; returns (pid, command fd, reply fd), the
    parent's ends. posix_spawn places the fds without running Python in the child (unlike
    Popen's preexec_fn, safe with threads)."""
    cmd_r, cmd_w = os.pipe()
    reply_r, reply_w = os.pipe()
    cmd_r, reply_w = _above_stdio(cmd_r), _above_stdio(reply_w)
    try:
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, cmd_r, 3),
            (os.POSIX_SPAWN_DUP2, reply_w, 4)])
    except BaseException:
        for fd in (cmd_w, reply_r):
            os.close(fd)
        raise
    finally:
        os.close(cmd_r)       # the child's ends: once Chromium exits, reading gives EOF
        os.close(reply_w)
    return pid, cmd_w, reply_r


@contextmanager
def chromium_page(chromium: str, size: tuple[int, int], timeout: float = 120):
    """Headless Chromium with a fresh profile, driven over the DevTools protocol on a pipe (a
    page is taken once it shows what is expected, not after a fixed wait); yields
    `send(method, **params) -> result` for one page; the browser is stopped by its process id."""
    exe = shutil.which(chromium) or chromium         # posix_spawn wants a path
    flags = CHROMIUM_FLAGS + (ROOT_ONLY_FLAGS if os.geteuid() == 0 else [])
    with tempfile.TemporaryDirectory() as profile:
        pid, commands, replies = spawn_with_pipe(
            [exe, *flags, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"],
            Path(profile) / "chromium.log")
        try:
            browser = DevToolsPipe(commands, replies, timeout)
            try:
                target = browser.send("Target.createTarget", url="about:blank")["targetId"]
            except (RuntimeError, TimeoutError) as e:
                log = (Path(profile) / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{chromium} did not start: {e}\n{log}") from None
            session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

            def send(method: str, **params):
                return browser.send(method, session, **params)

            send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                 mobile=False)
            yield send
        finally:
            os.close(commands)
            os.close(replies)
            stop_group(pid)


CLOSE_PANELS = ['[data-component-id="mlflow.assistant.chat_panel.close"]',     # the assistant side panel
                '[data-component-id="mlflow.experiment_page.shared_view.dismiss"]']  # the shared-view banner


def click(selector: str) -> str:
    """JavaScript: clicks the element (false when there is none)."""
    return f"(() => {{ const b = document.querySelector({json.dumps(selector)}); if (b) b.click(); return !!b; }})()"


def expander(run: dict) -> str:
    """JavaScript: the runs table's +/- button that shows a parent run's child runs, clicked."""
    return click(f'[row-id="{run_id(run)}"] button[data-component-id*="runnamecellrenderer"]')


def screenshot(send, url: str, steps: list[tuple[list[str], str | None]], out: Path, timeout: float = 120,
               settle: float = 3.0) -> Path:
    """Loads `url`; for each (texts, action) step waits until the page's text holds every
    text and no loading skeleton is left, then runs the action (JavaScript, e.g. a click)
    as a person would; closes side panels and banners, lets images settle, and
    writes the PNG."""
    send("Page.navigate", url=url)

    def js(expression: str):
        return send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    for texts, action in steps:
        shown = ("(() => { const t = document.body ? document.body.innerText : '';"
                 f" return {json.dumps(texts)}.every(s => t.includes(s))"
                 " && !document.querySelector('[class*=skeleton i]'); })()")
        deadline = time.time() + timeout
        while not js(shown):
            if time.time() > deadline:
                raise RuntimeError(f"{url} did not show {texts} within {timeout:.0f} s; it shows: "
                                   f"{(js('document.body ? document.body.innerText : String()') or '')[:1500]}")
            time.sleep(0.5)
        if action and not js(action):
            raise RuntimeError(f"{url}: {action} found nothing to act on")
    for selector in CLOSE_PANELS:
        js(click(selector))
    time.sleep(settle)
    out.write_bytes(base64.b64decode(send("Page.captureScreenshot", format="png")["data"]))
    return out


def metric_columns(variants: list[dict]) -> list[str]:
    """The runs table's metric columns: what the variant runs are compared by (compute first,
    then every quality metric; interval ends and timings left out)."""
    keys = {m["key"] for r in variants for m in r["data"].get("metrics", [])}
    rest = sorted(k for k in keys - set(FIRST_COLUMNS) if not k.endswith(("_lo", "_hi")) and not k.startswith("seconds"))
    return [f"metrics.`{k}`" for k in [*(k for k in FIRST_COLUMNS if k in keys), *rest]]


def run_id(run: dict) -> str:
    return run["info"]["run_id"]


def share_view(url: str, experiment_id: str, state: dict) -> None:
    """Stores a UI view state (e.g. the table's columns) under VIEW_KEY."""
    ajax(url, "experiments/set-experiment-tag", {"experiment_id": experiment_id,
                                                 "key": f"mlflow.sharedViewState.{VIEW_KEY}", "value": json.dumps(state)})


def run_name(run: dict) -> str:
    return run["info"]["run_name"]


def pages_to_take(url: str, runs: PipelineRuns) -> dict[str, tuple[str, list[tuple[list[str], str | None]]]]:
    """{file: (page URL, steps for `screenshot`)}."""
    exp = f"{url}/#/experiments/{runs.experiment_id}"
    table = [([run_name(runs.parent)], expander(runs.parent))]
    if "evaluate" in runs.steps:
        table.append(([run_name(r) for r in runs.steps.values()], expander(runs.steps["evaluate"])))
    table.append(([run_name(r) for r in runs.variants], None))
    pages = {"mlflow_runs.png": (f"{exp}/runs?viewStateShareKey={VIEW_KEY}", table)}
    if "evaluate" in runs.steps:
        ev = runs.steps["evaluate"]
        pages["mlflow_artifacts.png"] = (f"{exp}/runs/{run_id(ev)}/artifacts/quality_vs_gflops.png",
                                         [([run_name(ev), "summary.json"], None)])
    magnets = [r for r in runs.variants if run_name(r).startswith("magnets cache=")]
    if magnets:
        v = max(magnets, key=lambda r: run_name(r) != "magnets cache=none")       # the cached one when evaluated
        grids = [f["path"] for f in ajax(url, f"artifacts/list?run_id={run_id(v)}&path=images").get("files", [])
                 if f["path"].endswith(".png")]
        if grids:
            pages["mlflow_variant.png"] = (f"{exp}/runs/{run_id(v)}/artifacts/{grids[0]}",
                                           [([run_name(v), Path(grids[0]).name], None)])
    return pages


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(prog="python -m scripts.mlflow_screenshots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, default=Path("mlflow.db"), help="the pipeline's MLflow SQLite database")
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--experiment", help="experiment name (default: the one holding the newest pipeline run)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    a = ap.parse_args(argv)
    if not a.db.is_file():
        raise SystemExit(f"{a.db} does not exist: run `make demo` first (it writes ./mlflow.db)")
    if not shutil.which(a.chromium):
        raise SystemExit(f"{a.chromium} not found: install Chromium (Debian: apt-get install chromium)")
    a.out.mkdir(parents=True, exist_ok=True)
    size = (a.width, a.height)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        db = tmp / "mlflow.db"
        shutil.copyfile(a.db, db)
        with mlflow_ui(db, tmp / "ui.log") as url:
            runs = pipeline_runs(url, a.experiment)
            share_view(url, runs.experiment_id, {"selectedColumns": metric_columns(runs.variants)})
            with chromium_page(a.chromium, size) as send:
                for file, (page, steps) in pages_to_take(url, runs).items():
                    shot = screenshot(send, page, steps, tmp / file)
                    written.append(save_small_png(Image.open(shot), a.out / file))
                    print(f"{a.out / file}  {(a.out / file).stat().st_size / 1000:.0f} kB  <- {page}")
    return written


if __name__ == "__main__":
    main()
