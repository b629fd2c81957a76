"""The `nestgen` command line, run as a user would (a subprocess)."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image


def nestgen(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "nestgen", *args], capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"nestgen {args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def test_validate_reports_the_bad_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  width: 100\n")
    res = nestgen("validate", str(bad), check=False)
    assert res.returncode == 2
    assert "model.width: must be a positive multiple of heads=8" in res.stderr
    ok = nestgen("validate", "configs/digits.yaml", "--set", "train.steps=5")
    assert "steps: 5" in ok.stdout


def test_flops_table():
    res = nestgen("flops", "configs/digits.yaml", "--schedule", "1x12", "--cache", "none")
    assert "total GFLOPs per sample" in res.stdout
    assert res.stdout.count("yes") == 12
    bad = nestgen("flops", "configs/digits.yaml", "--schedule", "8x3,4x3", "--steps", "12", check=False)
    assert bad.returncode == 2 and "has 6 steps but 12" in bad.stderr


def test_train_then_sample_writes_a_png_grid(tmp_path):
    out = tmp_path / "run"
    nestgen("train", "configs/digits.yaml", "--out", str(out), "--set", "train.steps=6",
            "--set", "train.batch_size=8", "--set", "model.width=32", "--set", "model.depth=1",
            "--set", "train.log_every=3")
    assert (out / "checkpoint.pt").exists()
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [3, 6]
    png = tmp_path / "grid.png"
    res = nestgen("sample", str(out / "checkpoint.pt"), "--schedule", "magnets", "--cache", "on_switch",
                  "--num", "20", "--out", str(png))
    info = json.loads(res.stdout)
    assert info["schedule"] == "8x3,4x3,2x3,1x3" and info["num"] == 20
    img = np.asarray(Image.open(png))
    assert img.shape == (2 * (8 * 4 + 1) + 1, 10 * (8 * 4 + 1) + 1)    # 2 rows x 10 classes, 4x upscale
    bad = nestgen("sample", str(out / "checkpoint.pt"), "--class", "12", "--out", str(png), check=False)
    assert bad.returncode == 2 and "class 12 is out of range" in bad.stderr
