"""The JSON body of POST /v1/generate, as a strict pydantic model, and the two ways a request
ends without samples: refused (RequestError, with its HTTP status) or failed (DecodeFailed).

Strict: JSON types must match exactly ("3" is not a class id, 1.5 is not a sample count) and
unknown fields are refused, so a typo never silently falls back to a default. FastAPI turns
a mismatch into HTTP 422 naming the field; checks that depend on the served model (class
range, schedule, format) happen later, in nestgen.serving.resolve, as HTTP 400.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**31 - 1       # seeds are hashed as 32-bit counters (nestgen.decoding.noise)
# Float settings are finite and bounded: Python's JSON parser accepts Infinity and NaN, and a
# temperature near 0 turns logits / temperature into inf (NaN sampling). Within the bounds
# every value decodes; beyond them no sampler setting is useful.
MAX_GUIDANCE_SCALE = 20.0
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 10.0
MAX_SCHEDULE_CHARS = 256   # a schedule string is parsed before its step count is known


class Condition(BaseModel):
    """Given leading frames for frame prediction: exactly one of the two fields."""
    model_config = ConfigDict(strict=True, extra="forbid")

    mp4_base64: str | None = Field(None, description="an MP4 clip, base64-encoded (MP4 only; its size, frame count "
                                                     "and duration within the limits that /v1/model lists)")
    frames: list[Any] | None = Field(
        None, description="uint8 frames as nested lists, (T, H, W) gray or (T, H, W, C), H = W = the "
                          "tokenizer's image size")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    class_label: int | None = Field(None, description="class id; null: unconditional (the null class)")
    num_samples: int = Field(1, ge=1, description="samples to generate; each is one batch row")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="sample i uses seed + i: the same seed gives "
                                                       "the same sample alone or in any batch")
    schedule: str | None = Field(None, max_length=MAX_SCHEDULE_CHARS, description="preset name (GET /v1/schedules), a compact "
                                                  "schedule such as '8x3,4x3,2x3,1x3', or 'auto'; "
                                                  "null: the checkpoint's decode.schedule")
    steps: int | None = Field(None, ge=1, description="decoding steps K; null: the schedule's own; "
                                                     "at most the service's serve.max_steps (GET /v1/model)")
    guidance_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE_SCALE, allow_inf_nan=False,
                                         description="classifier-free guidance scale, finite, in "
                                                     f"[0, {MAX_GUIDANCE_SCALE:g}]; rounded to 0.01")
    temperature: float | None = Field(None, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False,
                                      description="token sampling temperature, finite, in "
                                                  f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]; rounded to 0.01")
    cache: str | None = Field(None, max_length=32, description="KV cache policy: none | on_switch | every:R, optionally +cls")
    format: Literal["png", "mp4", "tokens"] | None = Field(
        None, description="png (images; a strip of frames for video), mp4 (video models) or tokens; "
                          "null: png for image models, mp4 for video models")
    condition: Condition | None = Field(None, description="leading frames to continue (frame "
                                                          "prediction models only)")
    stream: bool = Field(False, description="true: answer with application/x-ndjson, one event a line: a 'step' "
                                            "event after every decoding step (the tokens so far, -1 where still "
                                            "masked), then a 'result' event with the answer (or an 'error' event)")


class RequestError(ValueError):
    """A request the service refuses. `status` is the HTTP status (400 for a request that is
    well-formed JSON but asks for something this model or service can't do, 413 for a body
    over the limit, 422 for wrong types, 503 when it is over capacity); the message is the reason
    shown to the client."""

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
