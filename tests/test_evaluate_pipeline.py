"""The evaluation step end to end: checkpoint + tokenizer shards -> Ray actors -> metrics,
files under the output URL, and MLflow (a parent run, a child run per variant)."""
import json

import av
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from nestgen.checkpoint import save_checkpoint
from nestgen.data.shards import read_manifest
from nestgen.model.nested_transformer import NestedTransformer
from pipelines.config import run_config_from_dict
from pipelines.evaluate import evaluate

pytestmark = pytest.mark.timeout(600)


def _checkpoint(path, shards, grid, vocab, **train):
    """An untrained generator over the shards' tokens: the step's plumbing does not need a
    good model, and the metrics are computed all the same."""
    m = read_manifest(str(shards))
    cfg = run_config_from_dict({"model": {"vocab_size": vocab, "grid": grid, "num_classes": 10, "width": 32,
                                      "depth": 1, "heads": 8},
                            "train": train, "data": {"source": "shards", "url": str(shards)}})
    torch.manual_seed(0)
    return save_checkpoint(str(path), cfg, NestedTransformer(cfg.model), tokenizer_hash=m["tokenizer"]["hash"])


def _user_cfg(tracking_uri, **evaluate):
    return run_config_from_dict({"name": "evtest", "mlflow": {"tracking_uri": tracking_uri, "experiment": "test-eval",
                                                           "system_metrics_every_s": 1},
                             "evaluate": {"num_samples": 40, "batch_size": 20, **evaluate}})


def test_ray_evaluation_writes_runs_plot_and_summary(ray_local, digit_shards, mlflow_server, tmp_path):
    ckpt = _checkpoint(tmp_path / "gen.pt", digit_shards, [4, 4], 32)
    cfg = _user_cfg(mlflow_server, schedules=["baseline", "magnets"], caches=["none"], interval_chunks=20,
                    bootstrap_replicates=50, search={"num_samples": 20, "max_candidates": 2, "budget_fraction": 0.5})
    out = tmp_path / "eval"
    res = evaluate(cfg, str(out), ckpt, use_ray=True)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "fd_digits" and {"fid", "is"} <= set(summary["unavailable_metrics"])
    assert "tokenizer" in summary["reference"]                   # reference = held-out split through the tokenizer
    names = [v["variant"] for v in summary["variants"]]
    assert names[:2] == ["baseline cache=none", "magnets cache=none"] and names[2].startswith("searched: ")
    assert summary["variants"][1]["gflops_saving"] > 2.5           # 16 tokens, depth 1: embeddings weigh more
    assert summary["variants"][2]["gflops_per_sample"] <= 0.5 * summary["baseline"]["gflops_per_sample"]
    assert (out / "quality_vs_gflops.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "samples").glob("*.png"))) == 3
    # workers returned chunk statistics: every variant has paired intervals and a claim check
    assert summary["intervals"]["chunks"] == 20 and len(summary["claim"]["lines"]) == 3
    assert summary["variants"][0]["quality_change_lo"] == summary["variants"][0]["quality_change_hi"] == 0
    for row in summary["variants"][1:]:
        assert row["quality_change_lo"] < row["quality_change_hi"]
        assert row["claim"]["change"] == row["quality_change_vs_baseline"]
        assert row["claim"]["verdict"] in ("yes", "no", "undecided")

    client = MlflowClient(mlflow_server)
    parent = client.get_run(res.run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["evaluate.metric"] == "fd_digits"
    assert "unavailable.fid" in parent.data.params
    assert {a.path for a in client.list_artifacts(res.run_id)} >= {"quality_vs_gflops.png", "summary.json"}
    [read] = parent.inputs.dataset_inputs                                # the token shards it compared against
    assert read.dataset.name == "tokens" and read.tags[0].value == "evaluation"
    assert client.get_metric_history(res.run_id, "system/cpu_utilization_percentage")   # MLflow's monitor
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{res.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(names)
    for c in children:
        assert c.info.status == "FINISHED"
        assert {"schedule", "cache", "steps", "guidance_scale", "temperature"} <= set(c.data.params)
        assert {"gflops_per_sample", "seconds_per_sample", "fd_digits", "digits_accuracy", "quality_change_lo",
                "quality_change_hi"} <= set(c.data.metrics)
        [grid] = [a.path for a in client.list_artifacts(c.info.run_id, "images") if a.path.endswith(".png")]
        assert grid.startswith("images/samples+step+0+")                 # an image the UI shows
    by_name = {c.info.run_name: c for c in children}
    assert by_name["baseline cache=none"].data.params["schedule"] == "1x12"
    assert by_name["magnets cache=none"].data.metrics["gflops_per_sample"] < \
        by_name["baseline cache=none"].data.metrics["gflops_per_sample"]


@pytest.fixture(scope="module")
def video_shards(ray_local, tmp_path_factory, moving_digits_mp4, video_tokenizer):
    from pipelines.tokenize import tokenize_to_shards
    out = tmp_path_factory.mktemp("video_shards")
    tokenize_to_shards(str(moving_digits_mp4), str(out), str(video_tokenizer))
    return out


def test_frame_prediction_evaluation_writes_videos(video_shards, tmp_path):
    m = read_manifest(str(video_shards))
    grid = m["grid_shape"]                                     # [T', H', W']
    cond = grid[1] * grid[2]                                   # the first latent frame is given
    ckpt = _checkpoint(tmp_path / "video.pt", video_shards, grid, m["vocab_size"], cond_tokens=cond)
    cfg = _user_cfg("", schedules=["baseline", "magnets"], caches=["on_switch"], num_samples=12, batch_size=6,
                    grid_samples=4, search={"enabled": False})
    out = tmp_path / "eval"
    evaluate(cfg, str(out), ckpt, use_ray=False, log_mlflow=False)
    s = json.loads((out / "summary.json").read_text())
    assert "fvd" in s["unavailable_metrics"]                   # no I3D weights here: said, not reported
    row = s["variants"][0]
    assert {"fvd_digits", "frame_pred_mse", "frame_pred_psnr"} <= set(row)
    assert s["protocols"]["frame_pred_psnr"]["cond_frames"] == 4   # 1 of 2 latent frames = 4 of 8 frames
    # the given frames are copied, so the prediction error only counts frames 4..7
    assert s["protocols"]["frame_pred_psnr"]["predicted_frames"] == 4
    mp4 = next((out / "samples").glob("*.mp4")).read_bytes()
    import io
    with av.open(io.BytesIO(mp4)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 8 and np.asarray(frames).std() > 0
    assert next((out / "samples").glob("*.gif")).read_bytes()[:3] == b"GIF"
