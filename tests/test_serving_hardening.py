"""Serving under hostile input without Ray: a failing decode group answers only its own
requests (with a reason that leaks nothing), the queue count and decode age, bearer auth."""
import asyncio
import json
from dataclasses import replace

import pytest
import torch

from nestgen.checkpoint import save_checkpoint
from nestgen.config import config_from_dict
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.serving.engine import FAILED, DecodeFailed, Engine
from nestgen.serving.job import Job
from nestgen.serving.request import GenerateRequest
from pipelines.config import ServeConfig
from pipelines.serve.middleware import BearerAuth, read_api_keys


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"width": 32, "depth": 1}})
    ckpt = save_checkpoint(str(tmp_path_factory.mktemp("eng") / "c.pt"), cfg, NestedTransformer(cfg.model))
    return Engine(ServeConfig(checkpoint=ckpt, batching="request", auto_presets=[], max_steps=30), device="cpu")


def test_a_failing_group_answers_its_own_requests_with_a_reason_that_leaks_nothing(engine):
    good = engine.resolve(GenerateRequest(class_label=1, seed=3, format="tokens"))
    other = engine.resolve(GenerateRequest(class_label=2, seed=4, format="tokens", temperature=0.5))
    # A job that slipped past validation: class 99 has no embedding row, so its decode raises
    # an IndexError deep inside torch. Only its group (another cache policy: temperature no
    # longer splits groups) may fail, and never with torch's text.
    assert good.decode.cache != "none"
    broken = Job(labels=[99], seeds=[0], decode=replace(good.decode, cache="none"), schedule_name="custom",
                 format="tokens")
    out = engine.run([good, broken, other])
    assert isinstance(out[1], DecodeFailed) and str(out[1]) == FAILED
    assert "index" not in str(out[1]).lower() and "99" not in str(out[1])
    assert [s["seed"] for s in out[0]["samples"]] == [3] and [s["seed"] for s in out[2]["samples"]] == [4]
    alone = engine.run([good])[0]
    assert alone["samples"][0]["tokens"] == out[0]["samples"][0]["tokens"]
    assert engine.decode_age_s() == 0.0        # nothing in flight after the batch, failure included


def test_the_steps_cap_defaults_from_the_checkpoint_and_is_reported(engine, tmp_path):
    assert engine.info()["limits"]["max_steps"] == 30
    e2 = Engine(ServeConfig(checkpoint=engine.cfg.checkpoint, auto_presets=[]), device="cpu")
    assert e2.spec.max_steps == 4 * 12


def test_decode_age_shows_a_decode_in_flight(engine):
    import threading
    seen = []
    long = engine.resolve(GenerateRequest(schedule="1x30", num_samples=4, format="tokens"))
    t = threading.Thread(target=engine.run, args=([long],))
    t.start()
    while t.is_alive():
        seen.append(engine.decode_age_s())
    t.join()
    assert max(seen) > 0 and engine.decode_age_s() == 0.0


def test_queue_rows_count_from_arrival_and_come_back_to_zero(engine):
    t0 = engine.admit(3)
    assert engine.queue_rows == 3
    engine.finish(3, t0)
    assert engine.queue_rows == 0


def _call(app, path, headers=(), root_path=""):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(m):
        sent.append(m)
    scope = {"type": "http", "path": root_path + path, "root_path": root_path, "headers": list(headers), "app": app}
    asyncio.run(BearerAuth(app)(scope, receive, send))
    return sent


class _App:
    """The inner ASGI app: answers 200, records that it was reached."""
    def __init__(self, keys):
        self.state = type("S", (), {"api_keys": keys})()
        self.reached = 0

    async def __call__(self, scope, receive, send):
        self.reached += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})


def test_bearer_auth_refuses_missing_and_wrong_keys_and_leaves_health_open(monkeypatch):
    monkeypatch.setenv("NG_KEYS", "k-one, k-two")
    app = _App(read_api_keys("NG_KEYS"))
    assert _call(app, "/v1/generate")[0]["status"] == 401
    assert _call(app, "/v1/generate", [(b"authorization", b"Bearer nope")])[0]["status"] == 401
    assert _call(app, "/v1/generate", [(b"authorization", b"Basic k-one")])[0]["status"] == 401
    body = json.loads(_call(app, "/v1/model")[1]["body"])
    assert "Authorization: Bearer" in body["detail"] and app.reached == 0
    assert _call(app, "/v1/generate", [(b"authorization", b"Bearer k-two")])[0]["status"] == 200
    assert _call(app, "/v1/health")[0]["status"] == 200 and app.reached == 2
    assert _call(app, "/v1/health", root_path="/img")[0]["status"] == 200        # under a route prefix
    assert _call(app, "/v1/model", root_path="/img")[0]["status"] == 401
    assert _call(_App(read_api_keys("")), "/v1/generate")[0]["status"] == 200     # auth off


def test_auth_fails_closed_when_the_named_variable_is_empty(monkeypatch):
    monkeypatch.delenv("NG_MISSING", raising=False)
    with pytest.raises(ValueError, match="NG_MISSING, but that environment variable holds no key"):
        read_api_keys("NG_MISSING")
