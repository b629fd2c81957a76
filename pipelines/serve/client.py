"""A small HTTP client of the service (stdlib only), used by `nestgen generate`."""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.serve.middleware import REPLICA_LOST

FORMAT_OF_SUFFIX = {".png": "png", ".mp4": "mp4", ".json": "tokens"}


class ServiceError(RuntimeError):
    def __init__(self, status: int, detail):
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


API_KEY_ENV = "NESTGEN_API_KEY"   # the key the client sends, when the service requires one
# A request whose replica died under it (its node or process): Serve retries only the choice of
# a replica, never a request it has sent, so the client sends it again and the survivor answers
# (the same samples, when the request names its seed). Serve's proxy answers it 503 with
# Retry-After (pipelines.serve.middleware.LostReplicaAs503) where the cluster runs that
# middleware, else with a bare 500 (nestgen's own 500s carry a JSON detail).
SENT_AGAIN = {(503, REPLICA_LOST), (500, "Internal Server Error")}
RETRIES = 2
MAX_RETRY_AFTER_S = 5.0
log = logging.getLogger(__name__)


def _open(url: str, payload: dict | None, timeout: float):
    """urlopen for a GET (payload None) or a JSON POST; ServiceError with the service's reason
    on 4xx/5xx, after up to RETRIES more tries of an answer in SENT_AGAIN (after its
    Retry-After, at most MAX_RETRY_AFTER_S). Sends `Authorization: Bearer $NESTGEN_API_KEY`
    when that variable is set."""
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    if os.environ.get(API_KEY_ENV):
        headers["authorization"] = f"Bearer {os.environ[API_KEY_ENV]}"
    for attempt in range(RETRIES + 1):
        try:
            return urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                detail = json.loads(body).get("detail", body.decode(errors="replace"))
            except ValueError:
                detail = body.decode(errors="replace")
            if (e.code, detail) not in SENT_AGAIN or attempt == RETRIES:
                raise ServiceError(e.code, detail) from None
            log.warning("%s: HTTP %d from Ray Serve's proxy (the replica died under the request); "
                        "sending it again (%d of %d)", url, e.code, attempt + 1, RETRIES)
            wait = e.headers.get("retry-after", "0")
            time.sleep(min(float(wait), MAX_RETRY_AFTER_S) if wait.isdigit() else 0.0)


def request_json(url: str, payload: dict | None = None, timeout: float = 600) -> dict:
    """GET (payload None) or POST JSON, the answer's JSON."""
    with _open(url, payload, timeout) as resp:
        return json.loads(resp.read())


def generate(base_url: str, payload: dict, timeout: float = 600) -> dict:
    return request_json(base_url.rstrip("/") + "/v1/generate", payload, timeout)


def _event(raw: bytes) -> dict:
    """One line of an answer stream as its event; ServiceError for a line that is not one."""
    try:
        event = json.loads(raw)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise ServiceError(200, f"the answer stream sent a line that is not an event: {raw[:80]!r}")
    return event


def generate_stream(base_url: str, payload: dict, on_step: Callable[[dict], None], timeout: float = 600) -> dict:
    """POST with `"stream": true`: on_step(event) for every step event as it arrives (the
    preview so far, nestgen.serving.stream), then the answer of the result event; ServiceError
    for an error event (the status it would have had) or a line that is no event. A stream cut
    before its result event (its replica died mid-decode: the 200 was sent, so no 503 can say
    so) is sent again, at most RETRIES more times, its steps starting over; then ServiceError."""
    for attempt in range(RETRIES + 1):
        try:
            with _open(base_url.rstrip("/") + "/v1/generate", payload | {"stream": True}, timeout) as resp:
                for raw in resp:
                    if not raw.endswith(b"\n"):        # a last line cut short: the stream was cut
                        break
                    if not raw.strip():
                        continue
                    event = _event(raw)
                    if event["event"] == "step":
                        on_step(event)
                    elif event["event"] == "result":
                        return event["result"]
                    else:
                        raise ServiceError(event.get("status", 500),
                                           event.get("detail", "the service reported an error"))
            how = "ended"
        except (http.client.HTTPException, ConnectionError) as e:       # cut mid-chunk
            how = f"was cut ({type(e).__name__})"
        if attempt < RETRIES:
            log.warning("%s: the answer stream %s before its result event (the replica died under it); "
                        "sending it again (%d of %d)", base_url, how, attempt + 1, RETRIES)
    raise ServiceError(200, f"the answer stream ended before its result event {RETRIES + 1} times "
                            "(the replica died under it each time)")


def save_samples(resp: dict, out: str) -> list[str]:
    """Write a response's samples to `out`: .json the whole response (tokens); .png one
    picture (a grid of all samples when there are several); .mp4 one clip, or out_<i>.mp4
    for several. Returns the paths written."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = resp["samples"]
    if path.suffix == ".json":
        path.write_text(json.dumps(resp))
        return [str(path)]
    key = path.suffix.lstrip(".")
    blobs = [base64.b64decode(s[key]) for s in samples]
    if len(blobs) == 1:
        path.write_bytes(blobs[0])
        return [str(path)]
    if key == "mp4":
        paths = [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(len(blobs))]
        for p, b in zip(paths, blobs):
            p.write_bytes(b)
        return [str(p) for p in paths]
    from PIL import Image

    from nestgen.images import make_grid, save_png
    images = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in blobs])
    save_png(str(path), make_grid(images, nrow=len(images)))
    return [str(path)]
