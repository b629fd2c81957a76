"""The ASGI middlewares of the service. In the replica, before FastAPI reads a request body:
the bearer-token check (401, serve.api_keys_env) and the body-size limit (413,
serve.max_body_bytes). In Serve's HTTP proxy: a lost replica's requests answered 503 (below).

Both read their setting per request from the app's `state` (set by the replica from its
ServeConfig), so the one module-level app serves any configuration.

Authentication: the accepted keys come from an environment variable (on a cluster, a Kubernetes
Secret), read once when the replica starts; the config file names only the variable, never a
key. Requests without a valid `Authorization: Bearer <key>` get 401 before their body is read.
Health stays open so that load balancers and Serve's probes need no key.

Body limit: FastAPI reads and parses a whole JSON body before the endpoint runs, so without it
an oversized request would cost the replica its memory and time.

A lost replica: when the replica handling a request dies before it answers (its process or its
node), Serve's proxy ends the request without a response and its HTTP server sends a bare 500.
LostReplicaAs503 runs in the proxy (Ray Serve's proxy middlewares, named by
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH: pipelines/__init__.py sets it for the Ray nestgen
starts, a cluster sets it on its nodes) and answers such a request 503 with Retry-After and the
reason, as any client expects of a request that can be sent again. A request whose answer had
begun (a stream) cannot change its status: the stream ends without its result event.
"""
from __future__ import annotations

import hmac
import json
import os

OPEN_PATHS = frozenset({"/v1/health"})
DEFAULT_MAX_BYTES = 4_000_000


def read_api_keys(env_var: str) -> frozenset[str]:
    """The accepted keys (comma-separated in `env_var`); empty when auth is off (env_var "")."""
    if not env_var:
        return frozenset()
    keys = frozenset(k.strip() for k in os.environ.get(env_var, "").split(",") if k.strip())
    if not keys:
        # Failing closed: a service configured for auth must never start open.
        raise ValueError(f"serve.api_keys_env names {env_var}, but that environment variable holds no key "
                         "on this replica; set it (comma-separated keys) or set api_keys_env to \"\"")
    return keys


def _authorized(header: bytes, keys: frozenset[str]) -> bool:
    scheme, _, token = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    # compare_digest against every key: the time taken does not tell which prefix matched
    return any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys)


def _route_path(scope) -> str:
    """The path below the application's route prefix (Serve mounts apps at e.g. /img; the
    ASGI `path` includes that `root_path`)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path.rstrip("/")


async def _reject(send, status: int, detail: str, header: tuple[bytes, bytes]) -> None:
    """A JSON {"detail": ...} answer sent before the app (or FastAPI) has seen the request."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            header]})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Reads the keys per request from the app's `state.api_keys` (set by the replica)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        keys = getattr(getattr(scope.get("app"), "state", None), "api_keys", None)
        if scope["type"] != "http" or not keys or _route_path(scope) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not _authorized(header, keys):
            return await _reject(send, 401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                                 (b"www-authenticate", b"Bearer"))
        return await self.app(scope, receive, send)


async def _reject_too_large(send, size: int | str, limit: int) -> None:
    await _reject(send, 413, f"request body of {size} bytes is over this service's limit of {limit} bytes "
                             "(serve.max_body_bytes)", (b"connection", b"close"))


class BodySizeLimit:
    """413 for a body over `state.max_body_bytes` (or the default), counted as it arrives."""

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
            return await _reject_too_large(send, int(declared), limit)
        # No (or a false) Content-Length: read at most limit + 1 bytes, then replay them.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":          # client went away
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _reject_too_large(send, f"more than {limit}", limit)
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


REPLICA_LOST = ("the replica handling this request was lost (its process or node died) before it answered; "
                "send the request again")
REPLICA_LOST_RETRY_AFTER_S = 1


class LostReplicaAs503:
    """In Serve's proxy: 503 with Retry-After for an HTTP request the proxy ended without any
    answer (its replica died), unless the client itself went away."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = gone = False

        async def watch_receive():
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def watch_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        await self.app(scope, watch_receive, watch_send)
        if not started and not gone:
            await _reject(send, 503, REPLICA_LOST, (b"retry-after", str(REPLICA_LOST_RETRY_AFTER_S).encode()))


def proxy_middlewares() -> list:
    """What Ray Serve's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH) for the
    middlewares it wraps itself in."""
    from starlette.middleware import Middleware
    return [Middleware(LostReplicaAs503)]
