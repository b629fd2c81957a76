"""Screenshots of the MLflow UI as a person sees it after `make demo` (`make screenshots`):

    python -m scripts.mlflow_screenshots --db mlflow.db --out docs/images

Starts `mlflow ui` on 127.0.0.1 on a copy of the database (the original is never written),
loads pages in headless Chromium (Debian's `chromium` package) and writes, as PNGs under
100 kB:
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
import json
import os
import shutil
import signal
import socket
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

from scripts.small_png import save_small_png

VIEW_KEY = "readme"
FIRST_COLUMNS = ["gflops_per_sample", "gflops_saving"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, and everything it started, by its
    process group: SIGTERM, then SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def mlflow_ui(db: Path, log: Path, timeout: float = 120):
    """`mlflow ui` on sqlite:///db, 127.0.0.1 and a free port; yields its URL; stopped by PID."""
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "ui", "--backend-store-uri", f"sqlite:///{db.resolve()}",
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow ui did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        stop_group(proc)


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


@contextmanager
def chromium_page(chromium: str, size: tuple[int, int], timeout: float = 120):
    """Headless Chromium with a fresh profile, driven over the DevTools protocol (a page is
    taken once it shows what is expected, not after a fixed wait); yields `send(method,
    **params) -> result`; the browser is stopped by its process id."""
    from websockets.sync.client import connect
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                 f"--window-size={size[0]},{size[1]}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file, deadline = Path(profile) / "DevToolsActivePort", time.time() + timeout
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{chromium} did not start (exit code {proc.poll()})")
                time.sleep(0.2)
            port = port_file.read_text().split()[0]
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
            ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
            with connect(ws_url, max_size=None, open_timeout=60) as ws:
                ids = iter(range(1, 1 << 30))

                def send(method: str, **params):
                    i = next(ids)
                    ws.send(json.dumps({"id": i, "method": method, "params": params}))
                    while True:
                        msg = json.loads(ws.recv(timeout=timeout))
                        if msg.get("id") == i:
                            if "error" in msg:
                                raise RuntimeError(f"{method}: {msg['error']}")
                            return msg["result"]

                send("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                     mobile=False)
                yield send
        finally:
            stop_group(proc)


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
