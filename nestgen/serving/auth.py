"""ASGI middleware: bearer-token authentication for the HTTP API (serve.api_keys_env).

The accepted keys come from an environment variable (on a cluster, a Kubernetes Secret), read
once when the replica starts; the config file names only the variable, never a key. Requests
without a valid `Authorization: Bearer <key>` get 401 before their body is read. Health stays
open so that load balancers and Serve's probes need no key.
"""
from __future__ import annotations

import hmac
import json
import os

OPEN_PATHS = frozenset({"/v1/health"})


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


async def _reject(send) -> None:
    body = json.dumps({"detail": "missing or invalid API key: send 'Authorization: Bearer <key>'"}).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b"Bearer")]})
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
            return await _reject(send)
        return await self.app(scope, receive, send)
