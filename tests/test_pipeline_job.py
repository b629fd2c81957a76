"""The whole embedded pipeline as users run it on a cluster: `ray job submit -- nestgen run`
to the dashboard of conftest's multi-node cluster (a head and worker nodes on 127.0.0.1,
chaoskit.cluster), wait for SUCCEEDED, check every step's outputs and MLflow, submit again
with the working directory uploaded (every step skipped). The job's driver is a process of
the cluster, not this one."""
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
TINY = ["tokenizer.image_size=16", "tokenizer.steps=10", "tokenizer.batch_size=32", "model.grid=[4,4]",
        "model.width=32", "model.depth=1", "train.steps=10", "train.log_every=5", "scaling.checkpoint_every=10",
        "scaling.num_workers=1", "pipeline.data_size=16", "evaluate.num_samples=20", "evaluate.batch_size=20",
        "evaluate.schedules=[baseline,magnets]", "evaluate.caches=[none]", "evaluate.search.num_samples=10",
        "evaluate.search.max_candidates=2"]


def _ray(*args, env, timeout=180):
    exe = str(Path(sys.executable).parent / "ray")
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _submit(address, env, cfg_args, tracking, working_dir):
    sets = [x for kv in cfg_args for x in ("--set", kv)]
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}}
    if working_dir == "upload":
        # The package is unpacked on the node that runs the driver only: the nodes of this
        # one-machine cluster share a session folder, and every node's agent unpacks a job's
        # package into the same path with overwrite (eager install), deleting it under a
        # running driver ("[Errno 2]" from os.getcwd()). Separate machines do not collide.
        args = ["--working-dir", str(REPO)]
        runtime_env["config"] = {"eager_install": False}
    else:
        runtime_env["working_dir"] = f"local://{REPO}"           # the code is already on every node
        args = []
    res = _ray("job", "submit", "--address", address, *args, "--runtime-env-json", json.dumps(runtime_env),
               "--", sys.executable, "-m", "pipelines", "run", "configs/digits_vq.yaml", *sets, env=env, timeout=800)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert "succeeded" in (res.stdout + res.stderr).lower()
    return res.stdout


def test_ray_job_submit_runs_the_whole_pipeline(cluster, tmp_path):
    address, env = cluster.dashboard, cluster.env
    out, tracking = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    t0 = time.time()
    log = _submit(address, env, TINY + [f"pipeline.output_url={out}", "mlflow.experiment=job-test"], tracking,
                  working_dir="on every node")
    first = time.time() - t0
    dag = {s["name"]: s for s in json.loads((out / "dag.json").read_text())["steps"]}
    assert list(dag) == ["data", "tokenizer", "tokenize", "train", "evaluate", "serve"]
    assert all(s["status"] == "done" for s in dag.values()), dag
    for s in dag.values():
        assert (Path(s["folder"]) / "_COMPLETE.json").exists()
    shards = dag["tokenize"]["outputs"]
    assert shards["rows"]["train"] > 1000 and shards["failed"] == 0
    ev = json.loads(Path(dag["evaluate"]["outputs"]["summary_url"]).read_text())
    assert [v["schedule"] for v in ev["variants"]][:2] == ["1x12", "8x3,4x3,2x3,1x3"]
    assert Path(dag["evaluate"]["outputs"]["plot_url"]).read_bytes()[:4] == b"\x89PNG"
    assert Path(dag["serve"]["outputs"]["sample_magnets"]).read_bytes()[:4] == b"\x89PNG"
    assert "mlflow ui --backend-store-uri" in log and "nestgen generate --url" in log
    # the closing table prints the claim check: the baseline against itself is +0.0% [+0.0, +0.0], within 10%
    assert re.search(r"baseline cache=none .*\+0\.0% \[\+0\.0, \+0\.0\] +yes", log), log
    # the console: a line per step and the summary; Ray's output is in the run's log file
    assert "Failed to query Ray Train Controller" not in log and "Running Dataset" not in log
    assert "Failed to query Ray Train Controller" not in "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    for step in dag:
        assert re.search(rf"\] {step} +done in ", log), (step, log)
    for line in log.splitlines():      # the hinted commands name executables that exist
        m = re.match(r"\s+(browse the runs|serve the model|then, in another shell):\s+(\S+)", line)
        if m:
            assert shutil.which(m.group(2)), line

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("job-test")
    parents = client.search_runs([exp.experiment_id], "tags.`nestgen.step` = 'pipeline'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(k.data.tags["nestgen.step"] for k in kids) == sorted(
        ["data", "train-tokenizer", "tokenize", "train", "evaluate", "serve"])
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} == {"dag.json", "dag.mmd"}
    read = {k.data.tags["nestgen.step"]: [d.dataset.name for d in k.inputs.dataset_inputs] for k in kids}
    assert read["train-tokenizer"] == read["tokenize"] == ["raw"] and read["train"] == read["evaluate"] == ["tokens"]
    assert f"#/experiments/{exp.experiment_id}/runs" in log              # the closing link to the runs table
    t0 = time.time()
    _the_ui_lists_the_runs(tmp_path / "mlflow.db", "job-test")
    ui = time.time() - t0

    t0 = time.time()
    # again with the working directory uploaded, as `ray job submit --working-dir .` does
    _submit(address, env, TINY + [f"pipeline.output_url={out}", "mlflow.experiment=job-test"], tracking,
            working_dir="upload")
    again = time.time() - t0
    dag = json.loads((out / "dag.json").read_text())["steps"]
    assert [s["status"] for s in dag] == ["skipped"] * 6
    print(f"first run {first:.0f} s, UI check {ui:.0f} s, re-run {again:.0f} s (all steps skipped)")


def _the_ui_lists_the_runs(db: Path, experiment: str) -> None:
    """`mlflow ui` on the pipeline's database, as `make ui` serves it (and `make screenshots`,
    whose code this uses): the page loads, and the calls its runs table makes list the
    pipeline run, its step runs and the evaluate step's variant runs with comparable metrics."""
    import urllib.request
    from scripts.mlflow_screenshots import mlflow_ui, pipeline_runs, tags
    with mlflow_ui(db, db.parent / "ui.log") as url:
        page = urllib.request.urlopen(f"{url}/", timeout=60).read().decode()
        assert '<div id="root"' in page
        [bundle] = re.findall(r'src="(static-files/static/js/main\.[0-9a-f]+\.js)"', page)
        assert len(urllib.request.urlopen(f"{url}/{bundle}", timeout=60).read()) > 100_000   # the app itself
        runs = pipeline_runs(url, experiment)
    assert runs.parent["info"]["run_name"] == "pipeline-digits-vq" and runs.parent["info"]["status"] == "FINISHED"
    assert sorted(runs.steps) == sorted(["data", "train-tokenizer", "tokenize", "train", "evaluate", "serve"])
    names = sorted(v["info"]["run_name"] for v in runs.variants)
    assert names[:2] == ["baseline cache=none", "magnets cache=none"] and names[2].startswith("searched: ")
    for v in runs.variants:                        # the columns a person compares the variants by
        metrics = {m["key"] for m in v["data"]["metrics"]}
        assert {"gflops_per_sample", "gflops_saving", "fd_digits", "digits_accuracy"} <= metrics, metrics
        assert tags(v)["mlflow.loggedImages"] == "True"
