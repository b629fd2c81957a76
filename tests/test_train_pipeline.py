"""Ray Train: 2 CPU workers (DDP over gloo) on the digit shards, checkpoints, failures, and
MLflow (a real server): the run as the UI shows it, the logged model loaded by MLflow itself."""
import base64
import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

import pipelines.train
import pipelines.train_tokenizer
from nestgen.checkpoint import load_model, read_checkpoint
from nestgen.tokenizers import TokenizerTrainer
from nestgen.training.loop import NestedTrainer
from pipelines.config import run_config_from_dict
from pipelines.model_registry import use_tracking_uri
from pipelines.train import fit
from scripts.mlflow_screenshots import mlflow_process

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(900)


def _cfg(shards, steps, tracking_uri="", name="t", grid_every=0, ema_decay=0.0, **scaling):
    return run_config_from_dict({
        "name": name,
        "model": {"vocab_size": 32, "grid": [4, 4], "num_classes": 10, "width": 64, "depth": 2, "heads": 8},
        "train": {"steps": steps, "batch_size": 32, "lr": 3e-3, "warmup_steps": 2, "log_every": 5,
                  "ema_decay": ema_decay},
        "data": {"source": "shards", "url": str(shards)},
        "scaling": {"num_workers": 2, "checkpoint_every": 10, "max_failures": 2, "shuffle_buffer": 256,
                    **scaling},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": "test-train", "sample_grid_every": grid_every},
    })


def _failing_once(loop, trainer_cls, step: int, flag):
    """The Ray Train `loop` with its workers' `trainer_cls.train_step` raising at `step` until
    one of them has (`flag` records it). A local function: it travels to the workers by value."""
    flag = str(flag)

    def loop_failing_once(config):
        real = trainer_cls.train_step

        def train_step(self, *args):
            if self.step == step and not os.path.exists(flag):
                open(flag, "w").close()
                raise RuntimeError(f"injected failure at step {step}")
            return real(self, *args)
        trainer_cls.train_step = train_step
        try:
            loop(config)
        finally:
            trainer_cls.train_step = real
    return loop_failing_once


def _recording_shards(loop, folder):
    """The Ray Train `loop` with each worker writing to `folder` (at its first step) its rank,
    the class and the local shape of its first block's qkv weight."""
    folder = str(folder)

    def loop_recording_shards(config):
        import ray.train
        real = NestedTrainer.train_step

        def train_step(self, *args):
            rank = ray.train.get_context().get_world_rank()
            path = os.path.join(folder, str(rank))
            if not os.path.exists(path):
                w = self.core.blocks[0].attn.qkv.weight
                local = w.to_local() if hasattr(w, "to_local") else w
                with open(path, "w") as f:
                    f.write(f"{rank} {type(w).__name__} {tuple(local.shape)}")
            return real(self, *args)
        NestedTrainer.train_step = train_step
        try:
            loop(config)
        finally:
            NestedTrainer.train_step = real
    return loop_recording_shards


@pytest.fixture(scope="module")
def trained(digit_shards, mlflow_server, tmp_path_factory):
    """One 2-worker training run tracked on the real MLflow server, registered as
    digits-test@production (system metrics sampled every second)."""
    cfg = _cfg(digit_shards, steps=40, tracking_uri=mlflow_server, name="two", grid_every=20)
    cfg.mlflow.registered_model, cfg.mlflow.registered_alias = "digits-test", "production"
    cfg.mlflow.system_metrics_every_s = 1
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return fit(cfg, str(tmp_path_factory.mktemp("trained") / "out")), cfg, head


def test_two_workers_learn_checkpoint_and_log_to_mlflow_server(trained, mlflow_server):
    res, _, _ = trained
    from nestgen.storage import read_bytes
    from pipelines.model_registry import resolve_model_uri
    assert resolve_model_uri(f"runs:/{res.run_id}", mlflow_server) == res.checkpoint_url
    for uri in ("models:/digits-test/1", "models:/digits-test@production"):     # the logged model's copy
        assert read_bytes(resolve_model_uri(uri, mlflow_server)) == read_bytes(res.checkpoint_url)
    assert res.metrics["step"] == 40 and res.start_step == 0
    ckpt = read_checkpoint(res.checkpoint_url)
    assert ckpt["step"] == 40 and ckpt["tokenizer_hash"]
    out = res.checkpoint_url.split("/published/")[0]
    assert read_checkpoint(out)["step"] == 40       # the output folder's LATEST

    client = MlflowClient(mlflow_server)
    run = client.get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.width"] == "64" and run.data.params["scaling.num_workers"] == "2"
    assert run.data.params["data.tokenizer_hash"] == ckpt["tokenizer_hash"]
    assert run.data.tags["checkpoint_uri"] == res.checkpoint_url
    for f in (1, 2, 4, 8):
        hist = sorted(client.get_metric_history(res.run_id, f"loss/f{f}"), key=lambda m: m.step)
        assert [m.step for m in hist] == [5, 10, 15, 20, 25, 30, 35, 40]
        assert hist[-1].value < hist[0].value - 0.1, (f, [m.value for m in hist])
    for key in ("lr", "tokens_per_s", "samples_per_s", "lambda"):
        assert client.get_metric_history(res.run_id, key)


def test_worker_failure_resumes_from_checkpoint_with_exact_steps_and_batches(digit_shards, tmp_path, monkeypatch):
    """A run that fails at step 6 resumes from its step-4 checkpoint and ends with the weights
    and loss of the same run that never failed: the resumed workers pass over the 4 batches of
    epoch 0 trained on before the checkpoint (batch 256 of ~1,600 rows: 6 steps an epoch) and
    go on into epoch 1 as the uninterrupted run does (they used to start epoch 0 again). The
    equality is also the generator's repeatability check: two fits of one config and seed on
    2 workers give bit-identical weights and EMA (the step-4 checkpoint the second resumed from
    was written by its own first attempt). And fit() leaves the SIGINT handler as it found it
    (Ray Train V2 installed its own and kept it: Ctrl-C no longer stopped `nestgen run` after
    training)."""
    def cfg():
        c = _cfg(digit_shards, steps=8, name="fault", checkpoint_every=4, ema_decay=0.9)
        c.train.batch_size = 256
        return c
    handler = signal.getsignal(signal.SIGINT)
    whole = fit(cfg(), str(tmp_path / "whole"))
    assert signal.getsignal(signal.SIGINT) is handler
    flag = tmp_path / "failed-once"
    monkeypatch.setattr(pipelines.train, "train_loop_per_worker",
                        _failing_once(pipelines.train.train_loop_per_worker, NestedTrainer, 6, flag))
    res = fit(cfg(), str(tmp_path / "out"))
    assert flag.exists()                           # it really failed once at step 6 ...
    assert res.metrics["step"] == 8                # ... and resumed from the step-4 checkpoint
    assert res.start_step == 4 and whole.start_step == 0
    ckpt, uninterrupted = read_checkpoint(res.checkpoint_url), read_checkpoint(whole.checkpoint_url)
    assert ckpt["step"] == 8 and ckpt["scheduler"]["last_epoch"] == 8      # 8 optimizer steps, no more
    for part in ("model", "ema"):
        assert ckpt[part].keys() == uninterrupted[part].keys()
        assert all(torch.equal(ckpt[part][k], uninterrupted[part][k]) for k in ckpt[part])
    assert res.metrics["loss/f1"] == whole.metrics["loss/f1"]      # steps 6-8, on the same code path


def test_run_that_keeps_failing_ends_failed_in_mlflow(digit_shards, tmp_path, monkeypatch):
    monkeypatch.setattr(pipelines.train, "train_loop_per_worker",
                        _failing_once(pipelines.train.train_loop_per_worker, NestedTrainer, 3, tmp_path / "flag"))
    cfg = _cfg(digit_shards, steps=20, name="doomed", max_failures=0)
    with pytest.raises(Exception, match="injected failure"):
        fit(cfg, str(tmp_path / "out"))
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("test-train").experiment_id],
        filter_string="attributes.run_name = 'train-doomed'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_second_fit_continues_and_never_deletes_what_was_published(digit_shards, tmp_path):
    """Rotation (keep_checkpoints=1) and a resumed run with more steps delete Ray's own
    checkpoint folders; the published checkpoint LATEST and a registered version named stays."""
    from nestgen.checkpoint_files import checkpoint_file
    out = str(tmp_path / "out")
    cfg = _cfg(digit_shards, steps=10, name="resume", keep_checkpoints=1)
    cfg.mlflow.registered_model, cfg.mlflow.registered_alias = "resume-test", "production"
    first = fit(cfg, out)
    assert first.metrics["step"] == 10 and first.checkpoint_url.startswith(f"{out}/published/")
    assert checkpoint_file(out) == first.checkpoint_url                      # LATEST names the copy
    ray_ckpt = tmp_path / "out" / "train-resume" / "checkpoint_00000010"
    assert ray_ckpt.exists()
    cfg.train.steps, cfg.mlflow.registered_alias = 20, ""
    second = fit(cfg, out)
    assert not ray_ckpt.exists()                          # rotated away by Ray (num_to_keep=1) ...
    assert second.start_step == 10 and second.metrics["step"] == 20
    a, b = read_checkpoint(first.checkpoint_url), read_checkpoint(second.checkpoint_url)   # ... the copy stays
    assert a["step"] == 10 and b["step"] == 20 and b["scheduler"]["last_epoch"] == 20
    assert not torch.equal(a["model"]["ln_f.weight"], b["model"]["ln_f.weight"])
    from pipelines.model_registry import resolve_model_uri
    assert read_checkpoint(resolve_model_uri("models:/resume-test@production"))["step"] == 10   # the alias' version still loads
    assert read_checkpoint(resolve_model_uri("models:/resume-test/2"))["step"] == 20
    assert read_checkpoint(out)["step"] == 20


def test_tokenizer_trains_on_two_workers_from_raw_files(ray_local, digits_png, tmp_path, monkeypatch):
    from nestgen.tokenizers import (evaluate_tokenizer, images_to_pixels, load_tokenizer, psnr_from_mse)
    from nestgen.data.image_files import read_image_folder
    from pipelines.train_tokenizer import fit_tokenizer
    cfg = run_config_from_dict({
        "name": "tok",
        "tokenizer": {"kind": "image", "channels": 3, "image_size": 16, "base_width": 8, "max_width": 16,
                      "downsample": 4, "codebook_size": 32, "code_dim": 8, "steps": 60, "batch_size": 32,
                      "lr": 3e-3, "log_every": 10, "dead_code_restart_every": 10},
        "scaling": {"num_workers": 2, "checkpoint_every": 30, "shuffle_buffer": 128},
    })
    flag = tmp_path / "failed"
    monkeypatch.setattr(pipelines.train_tokenizer, "tokenizer_loop_per_worker",
                        _failing_once(pipelines.train_tokenizer.tokenizer_loop_per_worker, TokenizerTrainer, 40, flag))
    res = fit_tokenizer(cfg, str(digits_png), str(tmp_path / "out"))
    assert flag.exists() and res.metrics["step"] == 60 and res.metrics["start_step"] == 30
    tok = load_tokenizer(res.checkpoint_url)
    assert tok.hash == res.tokenizer_hash
    assert load_tokenizer(str(tmp_path / "out")).hash == res.tokenizer_hash   # via LATEST
    images, _, _ = read_image_folder(str(digits_png), "val")
    px = images_to_pixels(images)
    ev = evaluate_tokenizer(tok, px)
    mean_image_psnr = psnr_from_mse(float(((px - px.mean(0, keepdim=True)) ** 2).mean()))
    assert ev["psnr"] > mean_image_psnr + 2.0 and ev["usage"] > 0.3, (ev, mean_image_psnr)
    assert MlflowClient().get_run(res.run_id).info.status == "FINISHED"


def test_checkpoints_on_gcs_emulator(digit_shards, gcs_emulator):
    """Checkpoints and the LATEST pointer on gs:// (a real GCS emulator on 127.0.0.1)."""
    out = f"gs://{gcs_emulator}/train-out"
    res = fit(_cfg(digit_shards, steps=10, name="gcs"), out)
    assert res.checkpoint_url.startswith(f"{out}/published/step00000010-") and res.checkpoint_url.endswith(".pt")
    assert read_checkpoint(res.checkpoint_url)["step"] == 10
    assert read_checkpoint(out)["step"] == 10


def test_fsdp_workers_learn_every_size_and_resume_exactly(digit_shards, mlflow_server, tmp_path, monkeypatch):
    """scaling.strategy fsdp (FSDP2 over gloo) with an EMA: every nested size learns; a failure
    at step 23 resumes from the step-20 checkpoint at exactly that step; the checkpoint is the
    unsharded single-process format (full weights, optimizer state numbered as torch numbers
    it, the EMA as a model state_dict, what evaluation loads); a periodic sample grid comes
    from a gathered copy."""
    flag, seen = tmp_path / "failed-once", tmp_path / "seen"
    seen.mkdir()
    monkeypatch.setattr(pipelines.train, "train_loop_per_worker", _recording_shards(
        _failing_once(pipelines.train.train_loop_per_worker, NestedTrainer, 23, flag), seen))
    cfg = _cfg(digit_shards, steps=30, tracking_uri=mlflow_server, name="fsdp", grid_every=20, ema_decay=0.9,
               strategy="fsdp")
    res = fit(cfg, str(tmp_path / "out"))
    assert flag.exists() and res.start_step == 20 and res.metrics["step"] == 30
    # each worker trained on its half of the rows of (here) the first block's qkv weight
    assert sorted(p.read_text() for p in seen.iterdir()) == ["0 DTensor (96, 64)", "1 DTensor (96, 64)"]
    ckpt = read_checkpoint(res.checkpoint_url)                     # weights_only
    assert ckpt["step"] == 30 and ckpt["scheduler"]["last_epoch"] == 30
    plain = NestedTrainer(cfg, device=torch.device("cpu"))
    assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in plain.core.state_dict().items()}
    assert sorted(ckpt["optimizer"]["state"]) == list(range(len(list(plain.core.parameters()))))
    plain.load_state(ckpt)                                         # a DDP or local run resumes from it
    assert plain.step == 30
    assert ckpt["ema"].keys() == ckpt["model"].keys()
    assert all(torch.equal(plain.ema.state_dict()[k], v) for k, v in ckpt["ema"].items())
    assert not torch.equal(ckpt["ema"]["blocks.0.attn.qkv.weight"], ckpt["model"]["blocks.0.attn.qkv.weight"])
    model, _ = load_model(res.checkpoint_url)                      # evaluation and serving: the EMA weights
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["ema"].items())

    client = MlflowClient(mlflow_server)
    for f in (1, 2, 4, 8):
        hist = sorted(client.get_metric_history(res.run_id, f"loss/f{f}"), key=lambda m: m.step)
        assert hist[0].step == 5 and hist[-1].step == 30
        assert hist[-1].value < hist[0].value - 0.1, (f, [m.value for m in hist])
    images = [a.path for a in client.list_artifacts(res.run_id, "images")]
    assert any(p.startswith("images/samples_by_nested_size+step+20+") for p in images)      # a periodic grid


def _rest(server: str, path: str, **query) -> dict:
    """GET <server>/api/2.0/mlflow/<path>: MLflow's REST API, as the UI reads it."""
    return json.load(urllib.request.urlopen(f"{server}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}",
                                            timeout=30))


def test_mlflow_ui_shows_the_run_with_its_data_code_model_and_pictures(trained, mlflow_server):
    from nestgen.data.shards import read_manifest
    from pipelines.mlflow_runs import runs_page_url
    res, cfg, head = trained
    run = _rest(mlflow_server, "runs/get", run_id=res.run_id)["run"]
    exp_id = run["info"]["experiment_id"]
    exp = _rest(mlflow_server, "experiments/get", experiment_id=exp_id)["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]   # opens on runs
    page = runs_page_url(cfg, exp_id)
    assert page == f"{mlflow_server}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    assert b"<html" in urllib.request.urlopen(page, timeout=30).read().lower()

    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}          # Source column: the code that ran
    assert tags["mlflow.source.git.commit"] == head and tags["mlflow.source.type"] == "LOCAL"
    [inp] = run["inputs"]["dataset_inputs"]                             # Dataset column: the token shards
    assert inp["dataset"]["name"] == "tokens" and json.loads(inp["dataset"]["source"])["uri"] == cfg.data.url
    assert inp["dataset"]["digest"] == read_manifest(cfg.data.url)["input_fingerprint"][:36]
    assert {"key": "mlflow.data.context", "value": "training"} in inp["tags"]

    [out] = run["outputs"]["model_outputs"]                             # Models column: the logged generator
    assert out["step"] == 40
    version = _rest(mlflow_server, "registered-models/alias", name="digits-test", alias="production")["model_version"]
    assert version["source"] == f"models:/{out['model_id']}" and version["run_id"] == res.run_id
    with use_tracking_uri(mlflow_server):
        info = mlflow.models.get_model_info(f"models:/{out['model_id']}")
    assert info.flavors["python_function"]["artifacts"]["checkpoint"]["path"] == "artifacts/checkpoint.pt"
    assert "tokenizer" in info.flavors["python_function"]["artifacts"]
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["label", "seed", "schedule"]
    assert info.signature.outputs.to_dict()[-1] == {"type": "binary", "name": "png", "required": True}
    assert info.saved_input_example_info["type"] == "dataframe"

    images = [a.path for a in MlflowClient(mlflow_server).list_artifacts(res.run_id, "images")]
    steps = sorted({int(p.split("+step+")[1].split("+")[0]) for p in images if "samples_by_nested_size" in p})
    assert steps == [20, 40] and tags["mlflow.loggedImages"] == "True"  # one grid per step: the UI's slider


def test_training_run_has_system_metrics(trained, mlflow_server):
    res, _, _ = trained
    client = MlflowClient(mlflow_server)
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert client.get_metric_history(res.run_id, key), key


def test_registered_model_generates_with_pyfunc_and_mlflow_models_serve(trained, mlflow_server, tmp_path):
    """MLflow's own loaders: pyfunc.load_model and `mlflow models serve` (POST /invocations)."""
    import pandas as pd
    uri = "models:/digits-test@production"
    asked = pd.DataFrame({"label": [3, 5], "seed": [0, 1], "schedule": ["baseline", ""]})
    with use_tracking_uri(mlflow_server):
        model = mlflow.pyfunc.load_model(uri)
    got = model.predict(asked)
    assert list(got["label"]) == [3, 5] and list(got["seed"]) == [0, 1]
    assert list(got["schedule"]) == ["1x12", "8x3,4x3,2x3,1x3"]         # baseline, then the checkpoint's (magnets)
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in got["png"])
    with pytest.raises(Exception, match="class_label 12 is out of range"):
        model.predict(pd.DataFrame({"label": [12], "seed": [0]}))

    bin_dir = Path(sys.executable).parent              # as from the activated environment: it starts uvicorn
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with mlflow_process(["models", "serve", "-m", uri, "--env-manager", "local", "-w", "1"], tmp_path / "serve.log",
                        ready_path="/ping", env=env, timeout=180) as url:
        body = json.dumps({"dataframe_split": {"columns": ["label", "seed", "schedule"],
                                               "data": [[3, 0, "baseline"], [5, 1, ""]]}}).encode()
        req = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
        preds = json.load(urllib.request.urlopen(req, timeout=120))["predictions"]
    assert [p["label"] for p in preds] == [3, 5]
    # the same seeds give the same samples in either loader
    assert [base64.b64decode(p["png"]) for p in preds] == list(got["png"])
