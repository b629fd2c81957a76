"""The serving logic's errors: a refused request and its HTTP status, and a failed decode."""
from __future__ import annotations


class RequestError(ValueError):
    """A request the service refuses. `status` is the HTTP status (400 for a request that is
    well-formed JSON but asks for something this model or service can't do, 413 for a body
    over the limit, 422 for wrong types, 503 when it is over capacity); the message is the reason shown to the
    client."""

    def __init__(self, reason: str, status: int = 400, retry_after_s: int | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s     # a 503's Retry-After, when the service knows one


FAILED = "generation failed on the server; the cause is in the replica's log"


class DecodeFailed(RuntimeError):
    """A decode that raised: its requests get this generic reason (HTTP 500), never the
    exception's own text, which can name files, shapes or library internals."""

    def __init__(self):
        super().__init__(FAILED)
