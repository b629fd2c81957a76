"""What a person sees at the command line: one-line errors with the cause and the fix (never
a traceback), placeholders refused, the next commands runnable as printed, and outputs of a
`ray job submit --working-dir` run kept out of Ray's temporary copy. Through the real CLI
(subprocesses); none of these start Ray."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import MlflowConfig, outside_job_copy, placeholders
from pipelines.config import load_run_config as load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV_TOOLS = ("nestgen", "mlflow", "ray", "serve")     # what the README runs from the environment


def nestgen(*args, cwd=REPO, env=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def one_line_error(res, *expected: str) -> str:
    """The command failed with exactly one line on stderr, holding every `expected` text."""
    assert res.returncode != 0, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_a_dead_service_url_is_one_line_naming_the_fix(tmp_path):
    res = nestgen("generate", "--url", "http://127.0.0.1:9", "--class", "3", "--out", str(tmp_path / "s.png"))
    one_line_error(res, "no service answers at http://127.0.0.1:9", "Connection refused", "serve")


def test_an_unreachable_mlflow_is_one_line_naming_the_fix(tmp_path):
    res = nestgen("sample", "models:/nestgen-digits@production", "--out", str(tmp_path / "s.png"),
                  env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    one_line_error(res, "MLflow at http://127.0.0.1:9 failed", "MLFLOW_TRACKING_URI")


def test_unwritable_storage_and_bad_values_are_one_line(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    res = nestgen("run", "configs/digits.yaml", "--set", f"pipeline.output_url={tmp_path}/a-file/run")
    one_line_error(res, "a-file", "Fix:")
    res = nestgen("run", "configs/digits.yaml", "--set", "train.steps=-3")
    one_line_error(res, "train.steps")


def test_placeholders_are_refused_by_run_and_flagged_by_validate():
    res = nestgen("run", "configs/imagenet256.yaml")
    one_line_error(res, "NESTGEN_BUCKET", "is a placeholder", "infra/README.md")
    res = nestgen("validate", "configs/imagenet256.yaml")
    assert res.returncode == 1
    assert "pipeline.output_url=gs://NESTGEN_BUCKET/nestgen/runs/imagenet256" in res.stderr
    cfg = load_config(REPO / "configs" / "digits.yaml", ["pipeline.output_url=gs://YOUR-BUCKET/runs",
                                                         "mlflow.tracking_uri=http://<mlflow-host>:5000"])
    assert placeholders(cfg) == ["mlflow.tracking_uri=http://<mlflow-host>:5000",
                                 "pipeline.output_url=gs://YOUR-BUCKET/runs"]
    assert placeholders(load_config(REPO / "configs" / "digits.yaml")) == []


def test_a_ray_job_working_dir_copy_keeps_outputs_outside(tmp_path, monkeypatch):
    """`ray job submit --working-dir .` runs in runtime_resources/working_dir_files/<pkg>/,
    deleted with the Ray session: relative outputs and the default mlflow.db go to
    ~/nestgen-runs instead, absolute ones stay where they are."""
    copy = tmp_path / "session" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    (copy / "configs").mkdir(parents=True)
    (copy / "configs" / "digits.yaml").write_text((REPO / "configs" / "digits.yaml").read_text())
    home = tmp_path / "home"
    res = nestgen("run", "configs/digits.yaml", "--dry-run", cwd=copy, env={"HOME": str(home)})
    assert res.returncode == 0, res.stderr
    assert f"DAG under {home}/nestgen-runs/runs/pipeline" in res.stdout, res.stdout
    assert str(copy) not in res.stdout

    monkeypatch.chdir(copy)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert MlflowConfig().resolved_uri() == f"sqlite:///{home}/nestgen-runs/mlflow.db"
    cfg = load_config(REPO / "configs" / "digits.yaml", [f"pipeline.output_url={tmp_path}/mine"])
    assert outside_job_copy(cfg).pipeline.output_url == f"{tmp_path}/mine"


def test_hinted_commands_run_in_a_new_shell():
    """The closing hints name nestgen and mlflow as a new shell can run them: a path when
    the environment is not activated, the bare name when it is."""
    probe = "from pipelines.cli_args import runnable; print(runnable('nestgen'), runnable('mlflow'))"
    for path, bare in (("/usr/bin:/bin", False), (f"{BIN}:/usr/bin:/bin", True)):
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                             env={"PATH": path, "PYTHONPATH": str(REPO), "HOME": os.environ.get("HOME", "/")})
        for name, shown in zip(("nestgen", "mlflow"), out.stdout.split()):
            if bare:
                assert shown == name
            else:
                assert os.access(REPO / shown, os.X_OK) and Path(shown).name == name, shown


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


def _readme_commands() -> list[list[str]]:
    """Every command line of the README's bash blocks (continuations joined), split."""
    text = (REPO / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(shlex.split(line.replace("|", " ").replace("&&", " ")))
    return cmds


def test_readme_commands_resolve_after_activating_the_environment():
    """The README says to activate .venv (or use the make targets) right after the set-up
    commands; every `make` target it names exists and every tool it runs from the
    environment (bare after activating, or as .venv/bin/TOOL) is installed there."""
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert ". .venv/bin/activate" in setup and "make ui" in setup and "make serve" in setup
    cmds = _readme_commands()
    for cmd in cmds:
        if cmd[0] == "make":
            assert {a for a in cmd[1:] if "=" not in a} <= _makefile_targets(), cmd
    ran = {Path(c[0]).name for c in cmds if c[0] in ENV_TOOLS or c[0].startswith(".venv/bin/")}
    assert {"nestgen", "mlflow", "ray", "serve"} <= ran, ran
    for tool in ran:
        assert os.access(BIN / tool, os.X_OK), f"{tool} is not installed next to {sys.executable}"


def test_quiet_console_sends_everything_else_to_the_log(tmp_path):
    """While `quiet` holds the log, the terminal gets only `say` lines and bars; Python
    prints, writes to file descriptor 2 and a child process's output land in the log."""
    log = tmp_path / "logs" / "run.log"
    script = f"""
import os, subprocess, sys
from pipelines import console
with console.quiet({str(log)!r}):
    console.say("step line")
    print("ray chatter")
    os.write(2, b"from C code\\n")
    subprocess.run(["echo", "child process"], check=True)
    with console.bar("train", total=3, unit="step") as b:
        b.update(3)
print("after")
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.stdout == "step line\nafter\n"
    assert "train" in res.stderr and "from C code" not in res.stderr
    assert log.read_text().split() == "ray chatter from C code child process".split()


def test_the_closing_summary_names_the_served_seed_and_the_results():
    """`nestgen run`'s last lines (pipelines.console.closing_summary): the seeds' claim lines,
    the served sample, and the serve command naming the checkpoint of the train step that
    is served (the first seed's), never another seed's."""
    from pipelines.console import closing_summary
    cfg = load_config(REPO / "configs" / "digits_vq.yaml", ["mlflow.tracking_uri=sqlite:///x.db"])
    out = {"train-seed0": {"checkpoint_url": "runs/p/published/a.pt"},
           "train-seed1": {"checkpoint_url": "runs/p/published/b.pt"},
           "seeds": {"seeds": [0, 1], "summary_url": "runs/p/seeds/summary.json", "metric": "fd_digits",
                     "baseline_quality": 12.9, "baseline_quality_lo": 8.0, "baseline_quality_hi": 17.8,
                     "claims": ["magnets: +3.0% [-1.0, +7.0]"]},
           "serve": {"sample_baseline": "b.png", "sample_magnets": "m.png"}}
    text = closing_summary(cfg, out, "runs/p", 90.0, "http://127.0.0.1:5000/#/experiments/1/runs", "train-seed0")
    assert "pipeline finished in 1.5 min; outputs under runs/p" in text
    assert "baseline fd_digits 12.9 [8, 17.8]" in text and "  magnets: +3.0% [-1.0, +7.0]" in text
    assert "served samples: b.png, m.png" in text
    assert "--backend-store-uri sqlite:///x.db" in text and "open http://127.0.0.1:5000/#/experiments/1/runs" in text
    assert "serve configs/serve_digits.yaml --checkpoint runs/p/published/a.pt" in text and "b.pt" not in text
