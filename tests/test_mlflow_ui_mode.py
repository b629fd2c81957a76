"""What a person sees on `mlflow ui` after a pipeline run, in a fresh headless Chromium: the
experiment clicked on the home page opens as GenAI (MLflow 3.17's default, whatever the
experiment's kind), the printed link opens the runs table, and after the switch the closing
hint names is clicked, clicking the experiment or opening /#/experiments/<id> shows the runs."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.config import load_run_config
from pipelines.console import closing_summary
from pipelines.mlflow_runs import UI_MODE_HINT, UI_MODE_SWITCH, experiment_id, runs_page_url
from scripts.mlflow_screenshots import chromium_page, click, mlflow_ui

REPO = Path(__file__).resolve().parents[1]
RUN = "pipeline-digits-vq"


def test_the_closing_summary_and_the_readme_name_the_switch():
    for uri in ("sqlite:///mlflow.db", "http://127.0.0.1:5000"):
        cfg = load_run_config(REPO / "configs" / "digits_vq.yaml", [f"mlflow.tracking_uri={uri}"])
        assert UI_MODE_HINT in closing_summary(cfg, {}, "runs/pipeline", 60.0, runs_page_url(cfg, "1"), "train")
    assert f"from {UI_MODE_SWITCH[0]} to {UI_MODE_SWITCH[1]}" in UI_MODE_HINT
    readme = (REPO / "README.md").read_text()
    assert f"**{UI_MODE_SWITCH[1]}** in that switch" in readme


def _wait(js, expression: str, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (got := js(expression)):
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not show {what} within {timeout:.0f} s; it shows: "
                                 f"{(js('location.href + String.fromCharCode(10) + document.body.innerText') or '')[:1500]}")
        time.sleep(0.3)
    return got


def _shows(*texts: str) -> str:
    return f"(() => {{ const t = document.body ? document.body.innerText : ''; return {json.dumps(texts)}.every(s => t.includes(s)); }})()"


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (Debian: apt-get install chromium)")
def test_a_fresh_browser_reaches_the_runs_table_as_the_hint_says(tmp_path):
    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    exp = experiment_id(client, "digits-vq")                 # as the pipeline creates it
    run = client.create_run(exp, run_name=RUN, tags={"nestgen.step": "pipeline"})
    client.set_terminated(run.info.run_id)
    cfg = load_run_config(REPO / "configs" / "digits_vq.yaml", [f"mlflow.tracking_uri=sqlite:///{db}"])
    printed = runs_page_url(cfg, exp)
    runs_table = _shows("Run Name", RUN)
    with mlflow_ui(db, tmp_path / "ui.log") as url, chromium_page("chromium", (1400, 900)) as send:
        def js(expression: str):
            return send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

        def home_then_click_the_experiment():
            send("Page.navigate", url=f"{url}/")
            _wait(js, _shows("digits-vq", *UI_MODE_SWITCH), "the home page")
            assert js(click(f'a[href="#/experiments/{exp}"]'))
            # the experiment page redirects to its first tab, naming the mode in the URL
            return _wait(js, "location.hash.includes('workflowType=') && location.hash", "the experiment's tab")

        landed = home_then_click_the_experiment()        # a fresh browser: GenAI, whatever the kind tag says
        assert "workflowType=genai" in landed and "/runs" not in landed, landed
        assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"

        send("Page.navigate", url=printed.replace("http://127.0.0.1:5000", url))      # the printed link
        _wait(js, runs_table, "the runs table from the printed link")

        send("Page.navigate", url=f"{url}/")                # the switch the hint names, as a person clicks it
        _wait(js, _shows(*UI_MODE_SWITCH), "the mode switch")
        assert js(f"(() => {{ const b = [...document.querySelectorAll('[role=button]')]"
                  f".find(e => e.innerText.trim() === {json.dumps(UI_MODE_SWITCH[1])}); if (b) b.click(); return !!b; }})()")
        _wait(js, f"localStorage.getItem('mlflow.workflowType_v1') === {json.dumps(json.dumps('machine_learning'))}",
              "the switch's choice kept in the browser")
        landed = home_then_click_the_experiment()
        assert "workflowType=machine_learning" in landed and "/runs" in landed, landed
        _wait(js, runs_table, "the runs table after the switch")
        send("Page.navigate", url=f"{url}/#/experiments/{exp}")
        _wait(js, "location.hash.includes('/runs') && " + runs_table, "the runs table at /#/experiments/<id>")
