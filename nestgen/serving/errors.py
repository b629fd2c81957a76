"""The one error type of the serving logic: a refused request and its HTTP status."""
from __future__ import annotations


class RequestError(ValueError):
    """A request the service refuses. `status` is the HTTP status (400 for a request that is
    well-formed JSON but asks for something this model or service can't do, 413 for a body
    over the limit, 422 for wrong types); the message is the reason shown to the client."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.status = status
        self.reason = reason
