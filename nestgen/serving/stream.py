"""Progressive results: a generate request with `"stream": true` is answered with one JSON
event a line (NDJSON, application/x-ndjson): a `step` event after each decoding step with the
preview so far, then one `result` event with the whole answer (or an `error` event).

NDJSON rather than server-sent events: the request is a POST with a JSON body, which the
browser's EventSource (the one client SSE's framing exists for) cannot send; an NDJSON line is a
whole JSON document, so any HTTP client reads the stream line by line with nothing to unframe,
and the final line has the same body as the non-streamed answer.

A request is refused (4xx, 503) before the stream starts, with the status a non-streamed
request gets; once the first byte is sent the status is 200, and a failure after that is an
`error` event carrying the status it would have had.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from nestgen.serving.request import FAILED, DecodeFailed, RequestError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/x-ndjson"
MASKED = -1     # a preview's token id where the position is still masked


def line(event: dict) -> bytes:
    return (json.dumps(event, separators=(",", ":")) + "\n").encode()


def step_event(ev, seeds: list[int]) -> dict:
    """A step event from the decode loop's StepEvent (tokens and masked, (rows, N) on the CPU)."""
    return {"event": "step", "step": ev.step, "steps": ev.steps, "schedule": ev.schedule, "seeds": seeds,
            "unmasked": (~ev.masked).sum(1).tolist(), "tokens": ev.tokens.masked_fill(ev.masked, MASKED).tolist()}


class StepStream:
    """One request's step events, carried from the decode loop's thread to the request's event
    loop. Create it on the event loop; hand `on_step` to the decode loop. The queue holds at most
    one event per step of the request (its steps are capped by serve.max_steps)."""

    _END = object()

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def on_step(self, ev) -> None:
        """The decode loop's per-step hook (its thread): only a hand-over, so a slow reader never
        slows the loop."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, ev)

    async def lines(self, answer: asyncio.Future, seeds: list[int]) -> AsyncIterator[bytes]:
        """Each step's event as the loop reports it, then `answer`'s `result` (or `error`). The
        decode loop reports a request's last step before it answers, so the end comes last."""
        answer.add_done_callback(lambda _: self._queue.put_nowait(self._END))
        try:
            while (ev := await self._queue.get()) is not self._END:
                yield line(step_event(ev, seeds))
            yield line(_final(answer))
        finally:
            answer.cancel()     # the client left mid-stream: the answer (and its rows) are dropped


def _final(answer: asyncio.Future) -> dict:
    """The last line: the answer (a dict), or an error with the status it would have had (an
    answer may also be a DecodeFailed value, as the replica's decode paths return it)."""
    try:
        out = answer.result()
    except RequestError as e:
        return {"event": "error", "status": e.status, "detail": e.reason}
    except Exception:       # noqa: BLE001 - logged here; the client gets the generic reason, as without stream
        log.exception("a streamed request failed")
        out = DecodeFailed()
    if isinstance(out, Exception):
        return {"event": "error", "status": 500, "detail": FAILED}
    return {"event": "result", "result": out}
