"""Ray Serve on 127.0.0.1 (the session's one Ray): batching, seed reproducibility, every bad
input -> its 4xx while the replica keeps answering, a video model's playable MP4, the client."""
import base64
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from nestgen.checkpoint import save_checkpoint
from nestgen.config import config_from_dict
from nestgen.data.media import decode_mp4, encode_mp4
from nestgen.data.moving_digits import make_moving_digit_clips
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.tokenizers import clips_to_pixels, load_tokenizer
from pipelines.config import ServeConfig
from pipelines.ray_runtime import free_port

pytestmark = pytest.mark.timeout(600)


def _checkpoint(path, cfg_dict) -> str:
    torch.manual_seed(0)
    cfg = config_from_dict(cfg_dict)
    return save_checkpoint(str(path), cfg, NestedTransformer(cfg.model))


@pytest.fixture(scope="module")
def serve_base(ray_local):
    from ray import serve
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def image_url(serve_base, tmp_path_factory):
    """A tiny untrained raw-digits model (8x8 gray levels: PNGs need no tokenizer)."""
    from ray import serve

    from pipelines.serve import build
    ckpt = _checkpoint(tmp_path_factory.mktemp("img") / "c.pt", {"model": {"width": 32, "depth": 1}})
    cfg = ServeConfig(checkpoint=ckpt, batching="request", max_batch_size=16, batch_wait_timeout_s=0.25,
                      max_ongoing_requests=32, max_samples_per_request=4, max_body_bytes=20_000, cpus_per_replica=0.5,
                      auto_latency_target_s=1000.0)
    serve.run(build(cfg), name="img", route_prefix="/img")
    return serve_base + "/img"


@pytest.fixture(scope="module")
def guarded_url(serve_base, tmp_path_factory):
    """The same kind of model behind bearer auth, allowed long decodes and a 1 s decode deadline
    (request-level batching: one decode can run past it). The key reaches the replica as an
    environment variable, as a cluster Secret would."""
    from ray import serve

    from nestgen.configschema import to_dict
    from pipelines.serve.deployment import deployment_options
    from pipelines.serve import Generator
    ckpt = _checkpoint(tmp_path_factory.mktemp("guard") / "c.pt", {"model": {"width": 32, "depth": 1}})
    cfg = ServeConfig(checkpoint=ckpt, batching="request", max_batch_size=8, max_ongoing_requests=16,
                      max_samples_per_request=4, cpus_per_replica=0.5, auto_presets=[], max_steps=100_000,
                      decode_deadline_s=1.0, api_keys_env="NESTGEN_TEST_KEYS")
    opts = deployment_options(cfg)
    opts["ray_actor_options"]["runtime_env"] = {"env_vars": {"NESTGEN_TEST_KEYS": "key-a,key-b"}}
    serve.run(Generator.options(**opts).bind(to_dict(cfg)), name="guard", route_prefix="/guard")
    return serve_base + "/guard"


@pytest.fixture(scope="module")
def step_url(serve_base, tmp_path_factory):
    """The raw-digits model with step-level batching: 4 rows decode at once, 8 may wait."""
    from ray import serve

    from pipelines.serve import build
    ckpt = _checkpoint(tmp_path_factory.mktemp("steps") / "c.pt", {"model": {"width": 32, "depth": 1}})
    cfg = ServeConfig(checkpoint=ckpt, batching="step", max_active_rows=4, max_queued_rows=8, retry_after_s=3,
                      max_batch_size=4, max_ongoing_requests=16, max_samples_per_request=4, cpus_per_replica=0.5,
                      auto_presets=[], max_steps=100_000)
    serve.run(build(cfg), name="steps", route_prefix="/steps")
    return serve_base + "/steps"


@pytest.fixture(scope="module")
def video_url(serve_base, tmp_path_factory, video_tokenizer):
    """A tiny untrained frame-prediction model on the conftest video tokenizer's 2x4x4 grid
    (8 frames of 32x32); the first latent frame (16 tokens, 4 frames) is the conditioning."""
    from ray import serve

    from pipelines.serve import build
    ckpt = _checkpoint(tmp_path_factory.mktemp("vid") / "c.pt", {
        "model": {"vocab_size": 32, "grid": [2, 4, 4], "width": 32, "depth": 1},
        "train": {"cond_tokens": 16}})
    cfg = ServeConfig(checkpoint=ckpt, tokenizer=str(video_tokenizer), max_batch_size=8, max_ongoing_requests=16,
                      max_samples_per_request=2, cpus_per_replica=0.5, auto_presets=[])
    serve.run(build(cfg), name="vid", route_prefix="/vid")
    return serve_base + "/vid"


def _post(url, body, **kw):
    return httpx.post(url + "/v1/generate", json=body, timeout=120, **kw)


def _tokens(resp):
    assert resp.status_code == 200, resp.text
    return [s["tokens"] for s in resp.json()["samples"]]


def test_read_endpoints(image_url):
    assert httpx.get(image_url + "/v1/health").json()["status"] == "ok"
    info = httpx.get(image_url + "/v1/model").json()
    assert info["kind"] == "image" and info["formats"] == ["png", "tokens"] and info["checkpoint"].endswith("c.pt")
    assert info["config"]["model"]["width"] == 32 and info["tokenizer"] is None
    sched = {p["name"]: p for p in httpx.get(image_url + "/v1/schedules").json()["presets"]}
    assert sched["magnets"]["schedule"] == "8x3,4x3,2x3,1x3"
    assert sched["baseline"]["gflops_per_sample"] > 2 * sched["magnets"]["gflops_per_sample"] > 0
    assert sched["baseline"]["seconds_per_full_batch"] >= sched["baseline"]["seconds_per_batch_of_1"] > 0
    served = httpx.get(image_url + "/openapi.json").json()
    assert served["paths"]["/v1/generate"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] \
        == {"$ref": "#/components/schemas/GenerateResponse"}


def test_serve_run_converts_string_arguments_and_names_a_wrong_field(serve_base, tmp_path):
    """`serve run pipelines.serve:app_builder key=value ...` (Ray's own CLI, on this session's Ray):
    the strings become ServeConfig's types; a wrong type or value is an error naming the field."""
    from click.testing import CliRunner
    from ray import serve
    from ray.serve.scripts import cli

    ckpt = _checkpoint(tmp_path / "c.pt", {"model": {"width": 32, "depth": 1}})
    cmd = ["run", "--non-blocking", "--name", "args", "--route-prefix", "/args", "pipelines.serve:app_builder",
           f"checkpoint={ckpt}", "cpus_per_replica=0.5", "auto_latency_target_s=1000"]
    for bad, says in (("max_batch_size=lots", "max_batch_size"), ("max_batch_size=0", "serve.max_batch_size: must be >= 1"),
                      ("max_bach_size=8", "max_bach_size")):
        result = CliRunner().invoke(cli, cmd + [bad])
        assert result.exit_code != 0 and says in str(result.exception), (bad, result.output, result.exception)
    result = CliRunner().invoke(cli, cmd + ["max_batch_size=16", "batch_wait_timeout_s=0.05", "max_samples_per_request=4"])
    assert result.exit_code == 0, (result.output, result.exception)
    try:
        limits = httpx.get(serve_base + "/args/v1/model", timeout=60).json()["limits"]
        assert (limits["max_batch_size"], limits["batch_wait_timeout_s"], limits["max_samples_per_request"]) == (16, 0.05, 4)
        assert _post(serve_base + "/args", {"num_samples": 2, "format": "tokens"}).status_code == 200
    finally:
        serve.delete("args")


def test_concurrent_requests_are_batched_and_match_the_same_seed_alone(image_url):
    bodies = [{"class_label": i % 10, "seed": 100 + i, "format": "tokens", "num_samples": 1 + i % 2,
               "schedule": "magnets" if i % 3 else "baseline"} for i in range(12)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: _post(image_url, b), bodies))
    meta = [r.json() for r in together]
    assert max(m["batch_size"] for m in meta) > 1, [m["batch_size"] for m in meta]
    assert max(m["batch_requests"] for m in meta) > 1
    for b, m in zip(bodies, meta):
        assert m["schedule_name"] == b["schedule"] and len(m["samples"]) == b["num_samples"]
        assert [s["seed"] for s in m["samples"]] == [b["seed"] + k for k in range(b["num_samples"])]
        assert m["gflops"] == pytest.approx(m["gflops_per_sample"] * b["num_samples"])
    for b, r in zip(bodies, together):      # each alone, one sample at a time
        for k, toks in enumerate(_tokens(r)):
            alone = _post(image_url, b | {"seed": b["seed"] + k, "num_samples": 1})
            assert alone.json()["batch_size"] == 1 and _tokens(alone) == [toks]
    assert _tokens(together[0]) != _tokens(together[3])          # other seeds, other samples


BAD = [  # (body or raw bytes, status, words of the reason)
    ({"class_label": 10}, 400, "class_label 10 is out of range"),
    ({"num_samples": 5}, 400, "above this service's cap of 4"),
    ({"schedule": "8x3,4y3"}, 400, "not of the form FACTORxSTEPS"),
    ({"schedule": "fastest"}, 400, "unknown schedule preset 'fastest'"),
    ({"format": "mp4"}, 400, "format 'mp4' is not available for this image model"),
    ({"condition": {"mp4_base64": "AAAA"}}, 400, "not trained for frame prediction"),
    ({"class_label": "3"}, 422, "valid integer"),
    ({"num_samples": 1.5}, 422, "valid integer"),
    ({"seed": 1, "colour": "red"}, 422, "Extra inputs are not permitted"),
    (b"{not json", 422, "JSON decode error"),
    ({"schedule": "x" * 30_000}, 413, "over this service's limit of 20000 bytes"),
    # bounded work and finite numbers (the default cap: 4 x the checkpoint's 12 steps)
    ({"schedule": "1x99999999999999"}, 400, "above this service's cap of 48 (serve.max_steps)"),
    ({"steps": 10**9, "schedule": "baseline"}, 400, "above this service's cap of 48"),
    (b'{"temperature": Infinity}', 422, "finite number"),
    (b'{"guidance_scale": 1e400}', 422, "finite number"),
    ({"temperature": 1e-320}, 422, "greater than or equal to 0.01"),
]


def test_every_bad_input_gets_its_4xx_and_the_replica_keeps_answering(image_url):
    ref = {"class_label": 4, "seed": 42, "format": "tokens"}
    before = _tokens(_post(image_url, ref))
    for body, status, words in BAD:
        if isinstance(body, bytes):
            r = httpx.post(image_url + "/v1/generate", content=body, headers={"content-type": "application/json"})
        else:
            r = _post(image_url, body)
        assert r.status_code == status, (body if len(str(body)) < 100 else "big", r.text[:300])
        assert words in r.text, (words, r.text[:300])
    assert _tokens(_post(image_url, ref)) == before
    png = _post(image_url, {"class_label": 4, "seed": 42, "num_samples": 2}).json()
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(png["samples"][0]["png"]))))
    assert png["format"] == "png" and img.shape == (8, 8) and img.dtype == np.uint8
    health = httpx.get(image_url + "/v1/health").json()
    assert health["status"] == "ok" and health["queue_rows"] == 0 and health["decode_age_s"] == 0


def test_auto_reports_the_schedule_it_chose(image_url):
    m = _post(image_url, {"schedule": "auto", "class_label": 1, "format": "tokens"}).json()
    # the latency target is 1000 s, so the best-quality preset always holds it
    assert m["schedule_name"] == "baseline" and m["schedule"] == "1x12"
    assert m["auto"]["met_target"] and m["auto"]["queue_rows"] == 0 and m["auto"]["expected_latency_s"] > 0
    assert "pending_gflops" not in m["auto"]        # request-level batching: the per-preset latency model


def test_video_model_answers_with_a_playable_mp4_and_continues_given_frames(video_url, video_tokenizer):
    info = httpx.get(video_url + "/v1/model").json()
    assert info["kind"] == "video" and info["formats"] == ["mp4", "png", "tokens"] and info["cond_tokens"] == 16

    r = _post(video_url, {"class_label": 2, "seed": 3})
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["format"] == "mp4"
    frames = decode_mp4(base64.b64decode(meta["samples"][0]["mp4"]))
    assert frames.shape == (8, 32, 32, 3)
    strip = _post(video_url, {"class_label": 2, "seed": 3, "format": "png"}).json()
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(strip["samples"][0]["png"])))).shape == (32, 8 * 32)

    clip, _ = make_moving_digit_clips(1, frames=8, size=32, seed=5)
    tok = load_tokenizer(str(video_tokenizer))
    padded = np.concatenate([clip[0, :4], np.repeat(clip[0, 3:4], 4, axis=0)])     # first 4 frames, padded
    expected = tok.encode(clips_to_pixels(padded[None])).reshape(-1)[:16].tolist()
    given = {"frames": clip[0].tolist()}
    pred = _tokens(_post(video_url, {"class_label": 2, "seed": 0, "num_samples": 2, "format": "tokens",
                                     "condition": given}))
    assert pred[0][:16] == expected and pred[1][:16] == expected and pred[0][16:] != pred[1][16:]
    as_mp4 = {"mp4_base64": base64.b64encode(encode_mp4(clip[0])).decode()}
    r = _post(video_url, {"class_label": 2, "condition": as_mp4})
    assert r.status_code == 200 and decode_mp4(base64.b64decode(r.json()["samples"][0]["mp4"])).shape[0] == 8

    for cond, status, words in [({"mp4_base64": base64.b64encode(b"not a video").decode()}, 400,
                                 "undecodable conditioning video"),
                                ({"mp4_base64": "%%%"}, 400, "not valid base64"),
                                ({"frames": clip[0, :2].tolist()}, 400, "has 2 frames; this model needs at least 4"),
                                ({"frames": [[[300]]]}, 422, "integers in 0..255"),
                                ({}, 422, "exactly one of mp4_base64 or frames")]:
        r = _post(video_url, {"condition": cond})
        assert r.status_code == status and words in r.text, r.text[:300]
    # An ffconcat text, which FFmpeg's format probing would follow to the replica's own files,
    # is refused alike whether the file it names exists ("." always does) or not.
    answers = [_post(video_url, {"condition": {"mp4_base64": base64.b64encode(
        f"ffconcat version 1.0\nfile '{name}'\n".encode()).decode()}}) for name in (".", "no-such-file.mp4")]
    assert [r.status_code for r in answers] == [400, 400] and answers[0].json() == answers[1].json()
    assert "undecodable conditioning video" in answers[0].text
    assert _tokens(_post(video_url, {"class_label": 2, "seed": 0, "format": "tokens", "condition": given})) == [pred[0]]


def test_nestgen_generate_client_writes_png_mp4_and_json(image_url, video_url, tmp_path, capsys):
    import json

    from pipelines.cli import main
    out = tmp_path / "grid.png"
    assert main(["generate", "--url", image_url, "--class", "3", "--schedule", "8x3,4x3,2x3,1x3",
                 "--num", "3", "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape == (8 + 2, 3 * 9 + 1)          # 3 samples in a row, 1 px gaps
    printed = json.loads(capsys.readouterr().out)
    assert printed["schedule"] == "8x3,4x3,2x3,1x3" and printed["written"] == [str(out)]
    assert main(["generate", "--url", video_url, "--class", "1", "--out", str(tmp_path / "clip.mp4")]) == 0
    assert decode_mp4((tmp_path / "clip.mp4").read_bytes()).shape == (8, 32, 32, 3)
    assert main(["generate", "--url", image_url, "--class", "12", "--out", str(tmp_path / "t.json")]) == 1
    assert "HTTP 400: class_label 12 is out of range" in capsys.readouterr().err


KEY = {"authorization": "Bearer key-b"}


def test_api_keys_guard_everything_but_health(guarded_url):
    assert httpx.get(guarded_url + "/v1/health").status_code == 200
    for r in (httpx.get(guarded_url + "/v1/model"), _post(guarded_url, {"format": "tokens"}),
              _post(guarded_url, {"format": "tokens"}, headers={"authorization": "Bearer key-c"})):
        assert r.status_code == 401 and "Authorization: Bearer" in r.text
    assert _post(guarded_url, {"format": "tokens", "seed": 1}, headers=KEY).status_code == 200


def _queue_rows(url: str) -> int:
    return httpx.get(url + "/v1/health", timeout=10).json()["queue_rows"]


def test_a_client_that_disconnects_leaves_the_queue_count_whole(guarded_url):
    """The client hangs up while its request is admitted (seen in the replica's own queue
    count), not after a fixed client timeout: how long a decode takes depends on the machine,
    so a decode that ends before it was seen is retried with 4x the steps."""
    from urllib.parse import urlsplit
    u = urlsplit(guarded_url)
    steps, hung_up = 150, False
    while not hung_up and steps <= 40_000:
        body = f'{{"format": "tokens", "schedule": "1x{steps}", "num_samples": 4}}'.encode()
        head = (f"POST {u.path}/v1/generate HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: {KEY['authorization']}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        sock = socket.create_connection((u.hostname, u.port), timeout=30)
        sock.sendall(head + body)
        sock.setblocking(False)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if sock.recv(1):               # answered before it was seen queued: decode was too short
                    break
            except BlockingIOError:
                pass
            if _queue_rows(guarded_url) >= 4:
                hung_up = True
                break
        sock.close()
        steps *= 4
    assert hung_up, "no decode lasted long enough to be seen in the queue"
    deadline = time.time() + 60
    while (rows := _queue_rows(guarded_url)) != 0 and time.time() < deadline:
        time.sleep(0.2)
    assert rows == 0
    # The abandoned decode still runs to its end in the decode thread; the replica answers after it.
    assert _post(guarded_url, {"format": "tokens", "seed": 2}, headers=KEY).status_code == 200


def test_a_stuck_decode_is_reported_and_serve_replaces_the_replica(guarded_url):
    first = httpx.get(guarded_url + "/v1/health").json()["replica"]
    # Long enough (tens of seconds even on a fast machine) that Serve's three failed probes
    # and the replacement come before the decode could end on its own.
    stuck = {"format": "tokens", "schedule": "1x60000", "num_samples": 4}
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: httpx.post(guarded_url + "/v1/generate", json=stuck, headers=KEY, timeout=120))
        seen, deadline, h = [], time.time() + 60, {"replica": first, "status": "no answer"}
        while time.time() < deadline:
            try:
                h = httpx.get(guarded_url + "/v1/health", timeout=10).json()
            except httpx.TimeoutException:
                # while Serve swaps the replica a probe can go unanswered for a while on a
                # loaded machine; the next one reaches whichever replica is up
                seen.append("no answer")
                continue
            seen.append(h["status"])
            if h["replica"] != first:
                break
            time.sleep(0.2)
        pending.result()        # answered or cut off with the old replica; either way it returns
    assert "stuck" in seen, seen
    assert h["replica"] != first and h["status"] == "ok", h
    assert _post(guarded_url, {"format": "tokens", "seed": 2}, headers=KEY).status_code == 200


def _hold(url: str, body: str) -> socket.socket:
    """POST `body` on a raw connection that stays open, unread, until closed."""
    from urllib.parse import urlsplit
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port), timeout=30)
    sock.sendall((f"POST {u.path}/v1/generate HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    return sock


def _wait_health(url: str, **want) -> dict:
    deadline = time.time() + 60
    while time.time() < deadline:
        h = httpx.get(url + "/v1/health", timeout=10).json()
        if all(h[k] == v for k, v in want.items()):
            return h
        time.sleep(0.1)
    raise AssertionError(f"health never showed {want}: {h}")


def test_step_batching_mixes_settings_exactly_caps_its_queue_and_drops_gone_clients(step_url):
    bodies = [{"class_label": i, "seed": 300 + i, "format": "tokens", "temperature": [1.0, 0.7][i % 2],
               "schedule": ["magnets", "baseline", "magnets-lite"][i % 3], "guidance_scale": [0.0, 1.5][i % 2],
               "cache": ["on_switch", "none", "every:2+cls"][i % 3]} for i in range(6)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: _post(step_url, b), bodies))
    assert all(r.json()["batching"] == "step" for r in together)
    for b, r in zip(bodies, together):
        alone = _post(step_url, b)
        assert alone.json()["batch_size"] == 1 and _tokens(alone) == _tokens(r), b
    # 4 rows decoding (a decode that would take minutes) and 8 waiting fill the replica: one more is a 503
    long = '{"format": "tokens", "schedule": "1x100000", "num_samples": 4}'
    held = [_hold(step_url, long)]
    _wait_health(step_url, active_rows=4)
    for queued in (4, 8):
        held.append(_hold(step_url, long))
        _wait_health(step_url, queued_rows=queued)
    refused = _post(step_url, {"format": "tokens"})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3", refused.text
    assert "serve.max_queued_rows" in refused.json()["detail"]
    for sock in held:          # the clients go away: their rows leave the loop at its next step
        sock.close()
    _wait_health(step_url, active_rows=0, queued_rows=0, queue_rows=0)
    assert _post(step_url, {"format": "tokens"}).status_code == 200
