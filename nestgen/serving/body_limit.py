"""ASGI middleware: HTTP 413 for request bodies over a byte limit, before anything parses them.

FastAPI reads and parses a whole JSON body before the endpoint runs, so without this an
oversized request would cost the replica its memory and time. The limit is read per request
from the app's `state.max_body_bytes` (set by the replica from its ServeConfig), so the one
module-level app serves any configured limit.
"""
from __future__ import annotations

import json

DEFAULT_MAX_BYTES = 4_000_000


async def _reject(send, size: int | str, limit: int) -> None:
    body = json.dumps({"detail": f"request body of {size} bytes is over this service's limit of "
                                 f"{limit} bytes (serve.max_body_bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    def __init__(self, app, default_max_bytes: int = DEFAULT_MAX_BYTES):
        self.app = app
        self.default_max_bytes = default_max_bytes

    def _limit(self, scope) -> int:
        state = getattr(scope.get("app"), "state", None)
        return getattr(state, "max_body_bytes", None) or self.default_max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self._limit(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await _reject(send, int(declared), limit)
        # No (or a false) Content-Length: read at most limit + 1 bytes, then replay them.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":          # client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _reject(send, f"more than {limit}", limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)
