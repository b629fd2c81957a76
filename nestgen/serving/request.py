"""The JSON body of POST /v1/generate, as a strict pydantic model.

Strict: JSON types must match exactly ("3" is not a class id, 1.5 is not a sample count) and
unknown fields are refused, so a typo never silently falls back to a default. FastAPI turns
a mismatch into HTTP 422 naming the field; checks that depend on the served model (class
range, schedule, format) happen later, in nestgen.serving.resolve, as HTTP 400.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**31 - 1       # seeds are hashed as 32-bit counters (nestgen.decoding.noise)


class Condition(BaseModel):
    """Given leading frames for frame prediction: exactly one of the two fields."""
    model_config = ConfigDict(strict=True, extra="forbid")

    mp4_base64: str | None = Field(None, description="an MP4 clip, base64-encoded")
    frames: list[Any] | None = Field(
        None, description="uint8 frames as nested lists, (T, H, W) gray or (T, H, W, C), H = W = the "
                          "tokenizer's image size")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    class_label: int | None = Field(None, description="class id; null: unconditional (the null class)")
    num_samples: int = Field(1, ge=1, description="samples to generate; each is one batch row")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="sample i uses seed + i: the same seed gives "
                                                       "the same sample alone or in any batch")
    schedule: str | None = Field(None, description="preset name (GET /v1/schedules), a compact "
                                                  "schedule such as '8x3,4x3,2x3,1x3', or 'auto'; "
                                                  "null: the checkpoint's decode.schedule")
    steps: int | None = Field(None, ge=1, description="decoding steps K; null: the schedule's own")
    guidance_scale: float | None = Field(None, ge=0, description="classifier-free guidance scale")
    temperature: float | None = Field(None, gt=0, description="token sampling temperature")
    cache: str | None = Field(None, description="KV cache policy: none | on_switch | every:R")
    format: Literal["png", "mp4", "tokens"] | None = Field(
        None, description="png (images; a strip of frames for video), mp4 (video models) or tokens; "
                          "null: png for image models, mp4 for video models")
    condition: Condition | None = Field(None, description="leading frames to continue (frame "
                                                          "prediction models only)")
