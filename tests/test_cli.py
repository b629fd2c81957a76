"""The `nestgen` command line, run as a user would (a subprocess)."""
import json
import subprocess
import sys

import numpy as np
from PIL import Image


def nestgen(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "pipelines", *args], capture_output=True, text=True, timeout=300)
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
    nestgen("train", "configs/digits.yaml", "--local", "--out", str(out), "--set", "train.steps=6",
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


def test_data_tokenizer_train_and_tokenize_commands(tmp_path):
    """The issue-3 path as a user runs it: files -> tokenizer -> Ray tokenize -> shards."""
    raw, tok, shards = tmp_path / "raw", tmp_path / "tok.pt", tmp_path / "shards"
    info = json.loads(nestgen("data", "digits", str(raw), "--size", "16").stdout)
    assert info["train"] + info["val"] == 1797
    small = ["--set", "tokenizer.image_size=16", "--set", "tokenizer.base_width=8", "--set", "tokenizer.max_width=16",
             "--set", "tokenizer.codebook_size=16", "--set", "tokenizer.code_dim=8", "--set", "tokenizer.steps=20"]
    out = json.loads(nestgen("tokenizer-train", "configs/digits.yaml", "--local", "--data", str(raw), "--out", str(tok),
                             *small).stdout)
    assert out["samples"] == info["train"] and out["psnr"] > 0
    res = nestgen("tokenize", "--input", str(raw / "val"), "--output", str(shards), "--tokenizer", str(tok))
    summary = json.loads(res.stdout)
    assert summary["splits"]["train"]["rows"] == info["val"]    # <class>/<file> layout: one split
    assert summary["grid_shape"] == [4, 4] and summary["failed"] == 0


def test_demo_writes_grids_and_quality_table(tmp_path):
    out = tmp_path / "demo"
    nestgen("demo", "configs/digits.yaml", "--set", "train.steps=10", "--set", "model.width=32",
            "--set", "train.log_every=5", "--set", "evaluate.num_samples=100", "--set", "evaluate.search.num_samples=40",
            "--set", "evaluate.search.max_candidates=3", "--set", "evaluate.bootstrap_replicates=100",
            "--out", str(out))
    assert json.loads((out / "summary.json").read_text())["evaluation"].endswith("summary.json")
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert {p.name for p in out.glob("samples_*.png")} == {
        "samples_baseline.png", "samples_magnets.png", "samples_magnets-cached.png"}
    assert (out / "evaluation" / "quality_vs_gflops.png").stat().st_size > 1000
    rows = summary["variants"]
    assert rows[-1]["label"] == "searched" and summary["search"]["chosen"]["schedule"] == rows[-1]["schedule"]
    assert rows[-1]["gflops_per_sample"] <= summary["search"]["budget_gflops"]
    assert [r["schedule"] for r in rows][:4] == ["1x12", "1x12", "8x3,4x3,2x3,1x3", "8x3,4x3,2x3,1x3"]
    assert rows[0]["gflops_saving"] == 1.0 and rows[3]["gflops_saving"] > 4
    assert all({"fd_digits", "digits_accuracy", "pareto", "seconds_per_sample"} <= set(r) for r in rows)
    assert any(r["pareto"] for r in rows)
    assert len(summary["claim"]["lines"]) == len(rows) and all("claim" in r for r in rows)
