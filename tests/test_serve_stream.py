"""Streamed answers ("stream": true, NDJSON) on Ray Serve (the session's one Ray, test_serve's
fixtures): one event per decoding step, tokens only ever unmasked, the same answer as without
stream, a client that hangs up mid-stream drops its row, `nestgen generate --stream`."""
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from test_serve import _checkpoint, _post, _tokens, image_url, serve_base  # noqa: F401 - fixtures reused

pytestmark = pytest.mark.timeout(600)

MASKED = -1


def _events(url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", url + "/v1/generate", json=body | {"stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


@pytest.fixture(scope="module")
def stream_url(serve_base, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """The raw-digits model with step-level batching, allowed very long decodes (1x200000 runs
    for minutes) and a far deadline."""
    from ray import serve

    from pipelines.config import ServeConfig
    from pipelines.serve import build
    ckpt = _checkpoint(tmp_path_factory.mktemp("stream") / "c.pt", {"model": {"width": 32, "depth": 1}})
    cfg = ServeConfig(checkpoint=ckpt, batching="step", max_samples_per_request=2, cpus_per_replica=0.5,
                      auto_presets=[], max_steps=1_000_000, decode_deadline_s=3600.0)
    serve.run(build(cfg), name="stream", route_prefix="/stream")
    yield serve_base + "/stream"
    serve.delete("stream")


def test_a_streamed_request_reports_every_step_and_ends_with_the_plain_answer(stream_url):
    body = {"class_label": 3, "seed": 11, "num_samples": 2, "format": "tokens", "schedule": "magnets",
            "guidance_scale": 1.5, "temperature": 0.7}
    events = _events(stream_url, body)
    steps, final = events[:-1], events[-1]
    assert [e["event"] for e in steps] == ["step"] * 12 and final["event"] == "result", [e["event"] for e in events]
    assert [e["step"] for e in steps] == list(range(1, 13))
    assert all(e["steps"] == 12 and e["schedule"] == "8x3,4x3,2x3,1x3" and e["seeds"] == [11, 12] for e in steps)
    before = [[MASKED] * 64] * 2
    for e in steps:
        for prev, now, unmasked in zip(before, e["tokens"], e["unmasked"]):
            assert all(p in (MASKED, n) for p, n in zip(prev, now))              # a chosen token stays chosen
            assert sum(t != MASKED for t in now) == unmasked > sum(t != MASKED for t in prev)
        before = e["tokens"]
    assert all(MASKED not in t for t in before)
    answer = final["result"]
    assert [s["tokens"] for s in answer["samples"]] == before
    assert answer["samples"] == _post(stream_url, body).json()["samples"]        # the same seed without stream
    png = _events(stream_url, body | {"format": "png", "num_samples": 1})[-1]["result"]
    assert png["format"] == "png" and png["samples"][0]["png"]


def test_the_stream_flag_is_a_bool_and_refusals_keep_their_status(stream_url, image_url):  # noqa: F811
    for bad in ("true", 1, None, [True]):
        r = _post(stream_url, {"format": "tokens", "stream": bad})
        assert r.status_code == 422 and "stream" in r.text, (bad, r.text[:300])
    r = _post(stream_url, {"format": "tokens", "stream": True, "class_label": 10})
    assert r.status_code == 400 and "class_label 10 is out of range" in r.text
    r = _post(stream_url, {"format": "tokens", "stream": True, "schedule": "1x1000001"})
    assert r.status_code == 400 and "serve.max_steps" in r.text
    assert _post(stream_url, {"format": "tokens", "stream": False}).headers["content-type"] == "application/json"
    r = _post(image_url, {"format": "tokens", "stream": True})      # batching request: whole decodes only
    assert r.status_code == 400 and "stream: per-step previews need serve.batching: step" in r.text


def _rows(url: str) -> tuple[int, int]:
    h = httpx.get(url + "/v1/health", timeout=30).json()
    return h["active_rows"], h["queue_rows"]


def test_a_client_that_leaves_mid_stream_drops_its_row(stream_url):
    body = {"format": "tokens", "schedule": "1x200000", "stream": True}
    with httpx.stream("POST", stream_url + "/v1/generate", json=body, timeout=120) as r:
        lines = r.iter_lines()      # held: a dropped line iterator closes the response (hangs up) too early
        first = json.loads(next(line for line in lines if line))
        assert first["event"] == "step" and first["steps"] == 200_000
        assert _rows(stream_url) == (1, 1)
    # Hung up after one step of 200000 (minutes of decoding): only a dropped row leaves this soon.
    deadline = time.time() + 30
    while (rows := _rows(stream_url)) != (0, 0) and time.time() < deadline:
        time.sleep(0.2)
    assert rows == (0, 0)
    assert _tokens(_post(stream_url, {"format": "tokens", "seed": 2}))       # the replica answers on


def test_nestgen_generate_stream_writes_the_final_png(stream_url, tmp_path, capsys):
    from pipelines.cli import main
    out = tmp_path / "s.png"
    args = ["generate", "--url", stream_url, "--class", "3", "--seed", "4", "--schedule", "magnets"]
    assert main(args + ["--stream", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["written"] == [str(out)] and printed["steps"] == 12
    assert main(args + ["--out", str(tmp_path / "plain.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "plain.png")))
