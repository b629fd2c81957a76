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
    cfg = _user_cfg(mlflow_server, schedules=["baseline", "magnets", "1x12"], caches=["none"], interval_chunks=20,
                    bootstrap_replicates=50, search={"num_samples": 20, "max_candidates": 2, "budget_fraction": 0.5})
    out = tmp_path / "eval"
    res = evaluate(cfg, str(out), ckpt, use_ray=True)
    # the step hands its actors' CPUs back when it ends (no reference cycle may keep them alive)
    from ray.util.state import list_actors
    alive = list_actors(address=ray_local.get_runtime_context().gcs_address,
                        filters=[("class_name", "=", "EvalWorker"), ("state", "=", "ALIVE")])
    assert alive == [], f"evaluation workers still alive after the step: {alive}"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "fd_digits" and {"fid", "is"} <= set(summary["unavailable_metrics"])
    # the reference is the training split through the tokenizer; the held-out split, decoded
    # alike, is the real-data row (the floor the generator can reach through its tokenizer)
    assert summary["reference"].startswith("split 'train' of ") and "tokenizer" in summary["reference"]
    train_rows = read_manifest(str(digit_shards))["splits"]["train"]["rows"]
    assert summary["protocols"]["fd_digits"]["reference"]["num_samples"] == train_rows
    real = summary["real_data"]
    assert real["variant"] == "real data (tokenizer)" and real["source"].startswith("split 'val' of ")
    assert real["num_samples"] == 40 and real["intervals"]["fd_digits"]["lo"] < real["intervals"]["fd_digits"]["hi"]
    names = [v["variant"] for v in summary["variants"]]
    assert names[:3] == ["baseline cache=none", "magnets cache=none", "1x12 cache=none"]
    assert names[3].startswith("searched: ")
    assert summary["variants"][1]["gflops_saving"] > 2.5           # 16 tokens, depth 1: embeddings weigh more
    assert summary["variants"][3]["gflops_per_sample"] <= 0.5 * summary["baseline"]["gflops_per_sample"]
    assert (out / "quality_vs_gflops.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "samples").glob("*.png"))) == 4
    # workers returned chunk statistics: every variant has paired intervals and a claim check
    assert summary["intervals"]["chunks"] == 20 and len(summary["claim"]["lines"]) == 4
    # "1x12" decodes the baseline's samples in its own stream: paired draws (the same for
    # every variant) give its change [0, 0] (to float rounding) and a "yes"; draws of its
    # own would give it the width of two independent intervals
    same = summary["variants"][2]
    assert same["quality_change_lo"] == pytest.approx(0, abs=1e-9) == same["quality_change_hi"]
    assert same["claim"]["verdict"] == "yes"
    for row in (summary["variants"][1], summary["variants"][3]):
        assert row["quality_change_lo"] < row["quality_change_hi"]
        assert row["claim"]["change"] == row["quality_change_vs_baseline"]
    # the floor is compared with the baseline at the real rows' count; where real data scores no
    # better there it is not comparable and every verdict reads the plain change, saying why
    floor = summary["floor"]
    share = None if floor.get("not_comparable") else floor["share_of_baseline"]
    assert floor["rows"] == real["num_samples"] and floor["measured"] == pytest.approx(real["fd_digits"])
    for row, line in zip(summary["variants"][1:], summary["claim"]["lines"][1:]):
        claim = row["claim"]      # the verdict reads the excess exactly when a comparable floor is above a quarter
        assert claim["floor_share"] == (None if share is None else pytest.approx(share))
        assert claim["reading"] == ("excess" if share is not None and share > 0.25 else "change")
        assert ("not comparable" in line) == (share is None)

    client = MlflowClient(mlflow_server)
    parent = client.get_run(res.run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["evaluate.metric"] == "fd_digits"
    assert "unavailable.fid" in parent.data.params
    assert parent.data.metrics["real_data_fd_digits"] == pytest.approx(real["fd_digits"])     # the floor
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
    # the held-out clips through the tokenizer: a floor for fvd_digits, no frame error (nothing predicted)
    real = s["real_data"]
    assert real["variant"] == "real data (tokenizer)" and "fvd_digits" in real and "frame_pred_mse" not in real
    assert s["protocols"]["frame_pred_psnr"]["cond_frames"] == 4   # 1 of 2 latent frames = 4 of 8 frames
    # the given frames are copied, so the prediction error only counts frames 4..7
    assert s["protocols"]["frame_pred_psnr"]["predicted_frames"] == 4
    mp4 = next((out / "samples").glob("*.mp4")).read_bytes()
    import io
    with av.open(io.BytesIO(mp4)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 8 and np.asarray(frames).std() > 0
    assert next((out / "samples").glob("*.gif")).read_bytes()[:3] == b"GIF"


def test_a_retried_evaluation_reuses_its_run_and_replaces_its_variant_runs(tmp_path, monkeypatch):
    """The DAG retries a failed evaluate step with the same run key (its fingerprint): the
    retry logs to the first attempt's run, and that attempt's variant runs (here after a
    failure while they were being logged) are replaced, not added to."""
    from unittest import mock

    from nestgen.evaluation import quality
    from nestgen.metrics import digits_train
    from pipelines.mlflow_runs import Run
    real_train = digits_train.train_digit_classifier          # the metric's classifier: one cheap epoch
    monkeypatch.setattr(digits_train, "train_digit_classifier",
                        lambda epochs, **kw: real_train(epochs=1, size=8, augment=False, **kw))
    monkeypatch.setattr(quality, "_DIGITS_NETS", {})
    cfg = run_config_from_dict({"model": {"width": 32, "depth": 1, "heads": 8}})          # raw 8x8 digits
    torch.manual_seed(0)
    ckpt = save_checkpoint(str(tmp_path / "gen.pt"), cfg, NestedTransformer(cfg.model))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    user = _user_cfg(uri, schedules=["baseline", "magnets"], caches=["none"], num_samples=4, batch_size=4,
                     interval_chunks=2, bootstrap_replicates=0, search={"enabled": False})
    real_files = Run.log_files

    def fail_on_samples(self, urls, artifact_path=None):
        if artifact_path == "samples":
            raise ConnectionError("tracking server went away")
        return real_files(self, urls, artifact_path)
    with mock.patch.object(Run, "log_files", fail_on_samples), pytest.raises(ConnectionError):
        evaluate(user, str(tmp_path / "eval"), ckpt, use_ray=False, run_key="fp-1")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("test-eval").experiment_id
    assert len(client.search_runs([exp])) == 2                 # the run and the variant run it failed in
    retry = evaluate(user, str(tmp_path / "eval"), ckpt, use_ray=False, run_key="fp-1")
    runs = client.search_runs([exp])
    parents = [r for r in runs if r.data.tags.get("nestgen.step") == "evaluate"]
    variants = [r for r in runs if r.data.tags.get("nestgen.step") == "evaluate.variant"]
    assert [r.info.run_id for r in parents] == [retry.run_id] and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in variants) == ["baseline cache=none", "magnets cache=none"]
    assert all(r.data.tags["mlflow.parentRunId"] == retry.run_id and r.info.status == "FINISHED" for r in variants)
