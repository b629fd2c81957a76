"""The serving logic without Ray: request checks, auto schedule choice, batch grouping, body
limit, Serve config files, registered-model checkpoint URIs."""
import asyncio
import base64
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from nestgen.checkpoint import save_checkpoint
from nestgen.config import DecodeConfig, config_from_dict
from nestgen.configschema import ConfigError
from nestgen.data.media import decode_mp4, encode_mp4
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.serving.auto import LatencyFeedback, LatencyModel, calibrate, choose_preset
from nestgen.serving.conditioning import condition_tokens
from nestgen.serving.job import Job, group_jobs, row_slices, rows_of
from nestgen.serving.request import Condition, GenerateRequest, RequestError
from nestgen.serving.resolve import ModelSpec, resolve_request
from nestgen.tokenizers import TokenizerConfig, VQTokenizer
from pipelines.config import ServeConfig, run_config_from_dict
from pipelines.serve.deployment import deployment_options, read_serve_file
from pipelines.serve.middleware import BodySizeLimit


def _spec(**kw):
    cfg = config_from_dict({"model": {"width": 32, "depth": 1}})
    return ModelSpec(model=cfg.model, decode=cfg.decode, cond_tokens=kw.get("cond_tokens", 0),
                     formats=kw.get("formats", ("png", "tokens")), max_samples=kw.get("max_samples", 4),
                     max_steps=kw.get("max_steps", 48))


@pytest.mark.parametrize("body, reason", [
    ({"class_label": 10}, "class_label 10 is out of range: this model takes 0..9 or null"),
    ({"num_samples": 5}, "num_samples 5 is above this service's cap of 4"),
    ({"schedule": "8x3,4y3"}, "is not of the form FACTORxSTEPS"),
    ({"schedule": "fastest"}, "unknown schedule preset 'fastest'"),
    ({"schedule": "16x12"}, "uses nest factor 16, but the model has nest factors [1, 2, 4, 8]"),
    ({"schedule": "magnets", "steps": 8}, "has 12 steps but 8 decoding steps"),
    ({"format": "mp4"}, "format 'mp4' is not available for this image model; choose one of png, tokens"),
    ({"cache": "sometimes"}, "unknown cache policy 'sometimes'"),
    ({"condition": {"frames": [[[0]]]}}, "not trained for frame prediction"),
    ({"schedule": "auto"}, "schedule 'auto' is switched off"),
    # bounded work: every way of asking for steps meets the cap before anything is sized by it
    ({"schedule": "1x99999999999999"}, "99999999999999 decoding steps is above this service's cap of 48"),
    ({"schedule": "1x40,8x9"}, "49 decoding steps is above this service's cap of 48"),
    ({"schedule": "baseline", "steps": 10**9}, "1000000000 decoding steps is above this service's cap of 48"),
    ({"steps": 10**30}, "decoding steps is above this service's cap of 48"),
])
def test_bad_requests_are_refused_with_their_reason(body, reason):
    with pytest.raises(RequestError) as e:
        resolve_request(GenerateRequest(**body), _spec())
    assert e.value.status == 400 and reason in e.value.reason


@pytest.mark.parametrize("body", [{"class_label": "3"}, {"num_samples": 1.5}, {"num_samples": 0},
                                  {"seed": -1}, {"schedule": 8}, {"format": "gif"}, {"guidance": 1.0},
                                  {"temperature": 0}, {"class_label": True},
                                  {"temperature": float("inf")}, {"guidance_scale": float("inf")},
                                  {"guidance_scale": float("nan")}, {"temperature": 1e-320},
                                  {"temperature": 11.0}, {"guidance_scale": 21.0}, {"schedule": "8x1," * 100},
                                  {"cache": "every:" + "9" * 40}])
def test_wrong_json_types_and_unbounded_values_fail_the_schema(body):
    with pytest.raises(ValidationError):
        GenerateRequest.model_validate(body)


def test_non_finite_json_numbers_are_refused_as_parsed_from_the_wire():
    # Python's JSON parser turns the bare words Infinity / NaN into floats: the schema still refuses them
    for raw in ('{"temperature": Infinity}', '{"guidance_scale": NaN}', '{"guidance_scale": -Infinity}'):
        with pytest.raises(ValidationError, match="finite number"):
            GenerateRequest.model_validate(json.loads(raw))


def test_requests_differing_only_in_temperature_and_guidance_share_one_decode_group():
    jobs = [resolve_request(GenerateRequest(temperature=t, guidance_scale=g, format="tokens"), _spec())
            for t, g in [(1.0, 0.5), (1.0001, 0.4999), (0.9999, 0.5004), (1.5, 0.5), (0.3, 0.0), (2.0, 7.5)]]
    assert [j.decode.temperature for j in jobs] == [1.0, 1.0, 1.0, 1.5, 0.3, 2.0]     # rounded to 0.01
    assert [j.decode.guidance_scale for j in jobs] == [0.5, 0.5, 0.5, 0.5, 0.0, 7.5]
    assert group_jobs(jobs) == [[0, 1, 2, 3, 4, 5]]


# Twelve ways to ask for the on_switch cache policy, and schedules that spell the same one.
ON_SWITCH = ["on_switch", " on_switch", "on_switch ", "  on_switch\t", "\non_switch", "\ton_switch\n",
             "never_within_size", " never_within_size", "never_within_size ", "\tnever_within_size",
             "never_within_size\n", "\r\non_switch \r\n"]
MAGNETS = ["magnets", "8x3,4x3,2x3,1x3", " 8x3, 4x3 ,2X3,1x3 ", "8x1,8x2,4x3,2x3,1x3", "magnets "]


def test_spellings_of_one_cache_policy_and_schedule_make_one_group():
    jobs = [resolve_request(GenerateRequest(cache=c, schedule=MAGNETS[i % len(MAGNETS)], format="tokens"), _spec())
            for i, c in enumerate(ON_SWITCH)]
    assert len(set(ON_SWITCH)) == 12
    assert {(j.decode.cache, j.decode.schedule) for j in jobs} == {("on_switch", "8x3,4x3,2x3,1x3")}
    assert group_jobs(jobs) == [list(range(12))]
    plus = [resolve_request(GenerateRequest(cache=c, format="tokens"), _spec()).decode.cache
            for c in ("never_within_size+cls", " on_switch+cls", "every:02", "off", "false ")]
    assert plus == ["on_switch+cls", "on_switch+cls", "every:2", "none", "none"]


def test_a_good_request_resolves_to_rows_with_consecutive_seeds():
    job = resolve_request(GenerateRequest(class_label=3, num_samples=3, seed=7, schedule="8x3,4x3,2x3,1x3",
                                          cache="none", temperature=0.5), _spec())
    assert job.labels == [3, 3, 3] and job.seeds == [7, 8, 9] and job.format == "png"
    assert job.decode.schedule == "8x3,4x3,2x3,1x3" and job.decode.steps == 12 and job.decode.cache == "none"
    assert job.decode.temperature == 0.5 and job.schedule_name == "magnets"     # the preset it spells
    assert resolve_request(GenerateRequest(schedule="4x6,1x6"), _spec()).schedule_name == "custom"
    uncond = resolve_request(GenerateRequest(schedule="magnets-2", format="tokens"), _spec())
    assert uncond.labels == [10] and uncond.schedule_name == "magnets-2" and uncond.decode.schedule == "2x6,1x6"
    default = resolve_request(GenerateRequest(), _spec())
    assert default.decode.schedule == "8x3,4x3,2x3,1x3"        # the checkpoint's decode.schedule (magnets)


def test_auto_prefers_quality_until_the_queue_makes_it_too_slow():
    lat = LatencyModel(fixed_s={"baseline": 0.10, "magnets": 0.04, "magnets-lite": 0.03},
                       per_row_s={"baseline": 0.010, "magnets": 0.004, "magnets-lite": 0.003}, max_batch=8)
    presets = ["baseline", "magnets", "magnets-lite"]
    assert lat.expected_latency("baseline", 0, 1) == pytest.approx(0.11)
    # 20 rows ahead + 1 own = 21 rows: two full batches of 8, then 5
    assert lat.expected_latency("baseline", 20, 1) == pytest.approx(2 * 0.18 + 0.15)
    def choose(queue, rows=1, **kw):
        return choose_preset(presets, lambda p: lat.expected_latency(p, queue, rows), 0.2, queue_rows=queue, **kw)
    assert choose(0)[0] == "baseline"
    assert choose(20)[0] == "magnets-lite"
    name, info = choose(8)
    assert name == "magnets" and info["met_target"] and info["queue_rows"] == 8
    name, info = choose(500)     # nothing holds it: the cheapest
    assert name == "magnets-lite" and not info["met_target"]

    spec = _spec()
    job = resolve_request(GenerateRequest(schedule="auto"), spec, lambda rows: choose(20, rows))
    assert job.schedule_name == "magnets-lite" and job.decode.schedule == "8x4,4x4,2x2,1x2"
    assert job.auto["expected_latency_s"] == pytest.approx(lat.expected_latency("magnets-lite", 20, 1), abs=1e-4)


def test_auto_feedback_corrects_an_optimistic_latency_model():
    lat = LatencyModel(fixed_s={"baseline": 0.1, "magnets": 0.05}, per_row_s={"baseline": 0.0, "magnets": 0.0},
                       max_batch=8)
    fb = LatencyFeedback()

    def model(p):
        return lat.expected_latency(p, 0, 1)
    assert choose_preset(["baseline", "magnets"], model, 0.25, fb.ratio)[0] == "baseline"
    for _ in range(30):                        # answers keep taking 3x what the model predicts
        fb.observe(0.1, 0.3)
    assert fb.ratio == pytest.approx(3.0, rel=0.01)
    name, info = choose_preset(["baseline", "magnets"], model, 0.25, fb.ratio)
    assert name == "magnets" and info["model_latency_s"] == 0.05 and info["expected_latency_s"] == pytest.approx(0.15, abs=1e-3)
    fb.observe(0.1, 1e6)                       # one stalled request moves it by at most alpha x 20
    assert fb.ratio < 0.8 * 3 + 0.2 * 20 + 1e-9


def test_calibration_fits_fixed_and_per_row_seconds():
    fake = {"a": (0.5, 0.1), "b": (0.2, 0.01)}
    lat = calibrate(["a", "b"], lambda p, rows: fake[p][0] + fake[p][1] * rows, max_batch=9)
    assert lat.fixed_s["a"] == pytest.approx(0.5) and lat.per_row_s["a"] == pytest.approx(0.1)
    assert lat.batch_seconds("b", 9) == pytest.approx(0.29)


def _job(schedule, rows, cache="on_switch", cond=None):
    return Job(labels=[0] * rows, seeds=list(range(rows)), format="tokens", schedule_name="x",
               decode=DecodeConfig(schedule=schedule, cache=cache), cond=cond)


def test_batch_is_grouped_by_decode_settings_keeping_order():
    jobs = [_job("1x12", 2), _job("8x3,4x3,2x3,1x3", 1), _job("1x12", 3), _job("1x12", 1, cache="none"),
            _job("1x12", 1, cond=torch.zeros(1, 4, dtype=torch.long))]
    assert group_jobs(jobs) == [[0, 2], [1], [3], [4]]
    assert rows_of(jobs) == 8
    assert row_slices([jobs[0], jobs[2]]) == [slice(0, 2), slice(2, 5)]


def _asgi_call(app, body: bytes, headers):
    sent = []
    chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)] or [b""]

    async def receive():
        c = chunks.pop(0)
        return {"type": "http.request", "body": c, "more_body": bool(chunks)}

    async def send(msg):
        sent.append(msg)

    asyncio.run(app({"type": "http", "headers": headers}, receive, send))
    return sent


def test_body_limit_answers_413_and_passes_small_bodies_whole():
    seen = []

    async def inner(scope, receive, send):
        msg = await receive()
        seen.append(msg["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})

    app = BodySizeLimit(inner, default_max_bytes=5000)
    out = _asgi_call(app, b"x" * 4000, [])                                   # chunked, under the limit
    assert out[0]["status"] == 200 and seen == [b"x" * 4000]
    out = _asgi_call(app, b"x" * 6000, [])                                   # chunked, over
    assert out[0]["status"] == 413 and b"limit of 5000 bytes" in out[1]["body"]
    out = _asgi_call(app, b"", [(b"content-length", b"999999")])            # declared, over
    assert out[0]["status"] == 413 and json.loads(out[1]["body"])["detail"].startswith("request body of 999999")
    assert len(seen) == 1


def test_serve_config_files_and_deployment_options():
    local, host, port = read_serve_file("configs/serve_digits.yaml")
    assert host == "127.0.0.1" and port == 8000 and local.checkpoint == "runs/pipeline/digits-vq"
    opts = deployment_options(local)
    assert opts["num_replicas"] == 1 and opts["max_ongoing_requests"] >= local.max_batch_size
    cluster, host, _ = read_serve_file("configs/serve_digits_cluster.yaml", ["max_replicas=4"])
    opts = deployment_options(cluster)
    assert opts["ray_actor_options"]["num_gpus"] == 1.0 and opts["autoscaling_config"]["max_replicas"] == 4
    assert "num_replicas" not in opts
    nested, host, port = read_serve_file("configs/digits.yaml", ["checkpoint=x.pt"])
    assert nested.checkpoint == "x.pt" and (host, port) == ("127.0.0.1", 8000)
    with pytest.raises(ConfigError, match="max_ongoing_requests: must be >= max_batch_size=32"):
        ServeConfig(max_ongoing_requests=5).validate()
    with pytest.raises(ConfigError, match="serve.max_samples_per_request"):
        read_serve_file("configs/serve_digits.yaml", ["max_samples_per_request=64"])


def _registered(tmp_path, monkeypatch, widths):
    """(tracking URI, checkpoint files): a training run in a SQLite store whose generators of
    `widths` are logged as MLflow models and registered as versions 1, 2, ... of `digits`."""
    from pipelines.config import run_config_from_dict
    from pipelines.mlflow_runs import start_run
    from pipelines.model_registry import log_generator, register_model
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))     # where models:/ downloads go
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpts = []
    for width in widths:
        cfg = run_config_from_dict({"model": {"width": width, "depth": 1},
                                    "mlflow": {"tracking_uri": uri, "experiment": "serve-test"}})
        ckpts.append(save_checkpoint(str(tmp_path / f"c{width}.pt"), cfg, NestedTransformer(cfg.model)))
        with start_run(cfg, "train", str(tmp_path)) as run:
            run.set_tags({"checkpoint_uri": ckpts[-1]})
            register_model(run, log_generator(run, ckpts[-1]), "digits")
    return uri, ckpts, run.run_id


def test_checkpoint_by_registered_mlflow_model(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from nestgen.checkpoint import load_model
    from nestgen.serving.engine import Engine
    from nestgen.storage import read_bytes
    from pipelines.model_registry import checkpoint_resolver, resolve_model_uri
    uri, [ckpt], run_id = _registered(tmp_path, monkeypatch, [32])
    client = MlflowClient(uri)
    client.set_registered_model_alias("digits", "prod", "1")
    assert resolve_model_uri(f"runs:/{run_id}", uri) == ckpt                  # the run's checkpoint_uri tag
    for name in ("models:/digits/1", "models:/digits@prod"):                   # MLflow's download of the model
        got = resolve_model_uri(name, uri)
        assert got.startswith(str(tmp_path / "cache")) and read_bytes(got) == read_bytes(ckpt)
    with pytest.raises(ValueError, match="expected models:/<name>/<version>"):
        resolve_model_uri("models:/digits/latest", uri)
    client.create_model_version("digits", ckpt, run_id=run_id)                # a version of no logged model
    with pytest.raises(FileNotFoundError, match="models:/digits/2 was not registered from a logged model"):
        resolve_model_uri("models:/digits/2", uri)
    eng = Engine(ServeConfig(checkpoint="models:/digits@prod", auto_presets=[]), resolve_uri=checkpoint_resolver(uri))
    assert read_bytes(eng.checkpoint_url) == read_bytes(ckpt) and eng.info()["formats"] == ["png", "tokens"]
    assert load_model(eng.checkpoint_url)[1].model.width == 32


def test_a_deployment_pins_the_version_its_alias_names_at_deploy_time(tmp_path, monkeypatch):
    """Replicas started after the alias moved (autoscaling) still serve the deployed version."""
    from mlflow.tracking import MlflowClient

    from pipelines.serve.deployment import serve_config_from_args
    from nestgen.serving.engine import Engine
    from pipelines.serve import build
    from pipelines.model_registry import checkpoint_resolver
    uri, ckpts, _ = _registered(tmp_path, monkeypatch, [32, 64])
    client = MlflowClient(uri)
    client.set_registered_model_alias("digits", "prod", "1")
    app = build(ServeConfig(checkpoint="models:/digits@prod", mlflow_tracking_uri=uri, auto_presets=[]))
    client.set_registered_model_alias("digits", "prod", "2")       # the alias moves after deployment
    replica_args = app._bound_deployment.init_args[0]              # what every replica is started with
    assert replica_args["checkpoint"] == "models:/digits/1"
    later = Engine(serve_config_from_args(replica_args), resolve_uri=checkpoint_resolver(uri))   # as a replica does
    assert later.model_cfg.model.width == 32
    assert build(ServeConfig(checkpoint=ckpts[1], auto_presets=[]))._bound_deployment.init_args[0]["checkpoint"] == ckpts[1]


def test_nestgen_serve_refuses_a_bad_config_before_starting_anything(capsys):
    from pipelines.cli import main
    assert main(["serve", "configs/serve_digits.yaml", "--set", "max_samples_per_request=64"]) == 2
    assert "serve.max_samples_per_request: must be in [1, max_batch_size=32]" in capsys.readouterr().err
    assert main(["serve", "configs/serve_digits.yaml", "--set", "max_batch_sise=8"]) == 2
    assert "unknown key(s) ['max_batch_sise']" in capsys.readouterr().err


# ---------------------------------------------------------------- conditioning MP4s

def _video_tokenizer():
    """A real (untrained) video tokenizer: 8 frames of 32x32 RGB -> a 2x4x4 grid."""
    torch.manual_seed(0)
    return VQTokenizer(TokenizerConfig(kind="video", channels=3, image_size=32, frames=8, downsample=8,
                                       temporal_downsample=4, base_width=4, max_width=8, codebook_size=16,
                                       code_dim=4))


def _condition(data: bytes | None, limits=None, frames=None):
    """condition_tokens for the first latent frame (16 tokens: 4 pixel frames) of an MP4 (or frames)."""
    cond = Condition(frames=frames) if frames is not None else Condition(mp4_base64=base64.b64encode(data).decode())
    return condition_tokens(cond, _video_tokenizer(), 16, [2, 4, 4], limits or ServeConfig().condition_limits())


def test_a_conditioning_ffconcat_text_is_refused_alike_whether_its_file_exists(tmp_path, monkeypatch, caplog):
    """FFmpeg's format probing opened an ffconcat text with the concat demuxer, which read the
    replica's own files (relative to its working directory) and told apart existing ones."""
    monkeypatch.chdir(tmp_path)
    clip = np.full((8, 32, 32, 3), 200, np.uint8)
    (tmp_path / "local.mp4").write_bytes(encode_mp4(clip))
    answers = []
    for name in ("local.mp4", "missing.mp4", "/etc/passwd"):
        with pytest.raises(RequestError) as e:
            _condition(f"ffconcat version 1.0\nfile '{name}'\n".encode())
        answers.append((e.value.status, e.value.reason))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0] == (400, "condition.mp4_base64: undecodable conditioning video (expected an MP4 file "
                               "with a video stream)")
    assert "refused a conditioning video" in caplog.text          # the cause is in the replica's log
    assert _condition((tmp_path / "local.mp4").read_bytes()).shape == (16,)     # sent as MP4 bytes, it works


def test_a_conditioning_mp4_over_the_limits_is_refused_before_decoding():
    big = encode_mp4(np.zeros((8, 64, 96, 3), np.uint8))
    limits = ServeConfig(max_condition_pixels=64 * 64).condition_limits()
    with pytest.raises(RequestError) as e:
        _condition(big, limits)
    assert e.value.status == 400
    assert e.value.reason == "condition.mp4_base64: video frames are 96x64 = 6144 pixels, over the budget of 4096"
    long = encode_mp4(np.zeros((90, 32, 32, 3), np.uint8), fps=30)
    with pytest.raises(RequestError, match="video has 90 frames, over the budget of 60"):
        _condition(long, ServeConfig(max_condition_frames=60).condition_limits())
    with pytest.raises(RequestError, match="video lasts 3.0 s, over the budget of 2"):
        _condition(long, ServeConfig(max_condition_seconds=2).condition_limits())
    short = encode_mp4(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(RequestError, match="has 2 frames; this model needs at least 4"):
        _condition(short)
    # Within the limits, a long clip conditions exactly as its first 4 decoded frames sent as
    # frames (decoding stops there: see test_a_long_video_is_decoded_only_as_far_as_its_clips_need).
    data = encode_mp4(np.random.default_rng(0).integers(0, 256, (90, 32, 32, 3), dtype=np.uint8), fps=30)
    assert torch.equal(_condition(data), _condition(None, frames=decode_mp4(data)[:4].tolist()))


def test_serve_config_refuses_non_positive_condition_limits():
    with pytest.raises(ConfigError, match="max_condition_frames"):
        run_config_from_dict({"serve": {"max_condition_frames": 0}})


@pytest.mark.parametrize("body, reason", [
    ({"schedule": ""}, "schedule is empty"),                          # "" is not "unset"
    ({"schedule": "８x3,４x3,２x3,１x3"}, "is not of the form FACTORxSTEPS"),   # fullwidth digits
    ({"cache": "every:٣"}, "unknown cache policy"),                     # Arabic-Indic digit
])
def test_only_ascii_schedules_and_policies_and_no_empty_schedule(body, reason):
    with pytest.raises(RequestError, match=reason):
        resolve_request(GenerateRequest(**body), _spec())


def test_a_mixed_batch_runs_as_one_decode_and_each_request_gets_its_tokens_alone(tmp_path):
    """Requests that differ in temperature, guidance scale and the cache policy's spelling run as
    one decode, each as its own settings say: its tokens are the ones it gets alone with the
    same seed. Frame-prediction jobs (conditioning tokens) form the second group."""
    from nestgen.serving.engine import Engine
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"width": 32, "depth": 1}})
    model = NestedTransformer(cfg.model)
    with torch.no_grad():   # weights large enough for guidance and temperature to change the samples
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    eng = Engine(ServeConfig(checkpoint=save_checkpoint(str(tmp_path / "c.pt"), cfg, model), auto_presets=[]))
    settings = [(1.0, 0.0, "on_switch"), (0.5, 2.0, " never_within_size"), (1.7, 0.0, "on_switch\n"),
                (1.0, 4.0, "on_switch ")]

    def jobs(cond: bool) -> list[Job]:
        out = []
        for k, (t, g, c) in enumerate(settings):
            job = resolve_request(GenerateRequest(class_label=k, num_samples=1 + k % 2, seed=10 * k, temperature=t,
                                                  guidance_scale=g, cache=c, format="tokens"), eng.spec)
            if cond:
                job.cond = torch.full((job.rows, 8), k, dtype=torch.long)
            out.append(job)
        return out

    batch = jobs(False) + jobs(True)
    got = eng.run(batch)
    assert [r["batch_size"] for r in got] == [6] * 4 + [6] * 4          # two decodes of 6 rows, not eight
    for job, resp in zip(batch, got):
        alone = eng.run([job])[0]
        assert alone["batch_size"] == job.rows
        assert [s["tokens"] for s in resp["samples"]] == [s["tokens"] for s in alone["samples"]]
        assert (resp["temperature"], resp["guidance_scale"]) == (job.decode.temperature, job.decode.guidance_scale)
        assert resp["gflops_per_sample"] == alone["gflops_per_sample"] and resp["cache"] == "on_switch"
    tokens = [[s["tokens"] for s in r["samples"]] for r in got]
    assert tokens[0][0] != tokens[4][0]          # the conditioning takes effect
    assert all(all(t[:8] == [k] * 8 for t in tokens[4 + k]) for k in range(4))


def test_a_model_logged_before_the_errors_moved_still_finds_request_error():
    """An MLflow model runs the copy of pipelines/mlflow_model.py logged with it; copies logged
    before RequestError moved into nestgen.serving.request import it from nestgen.serving.errors,
    and predict() catches it to answer a bad row with MLflow's INVALID_PARAMETER_VALUE."""
    from nestgen.serving.errors import RequestError as logged_path
    assert logged_path is RequestError
