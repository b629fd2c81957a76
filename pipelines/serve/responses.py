"""The JSON bodies the HTTP API answers with, as pydantic models: its OpenAPI description
(the events of a streamed answer, StreamEvent, included).

The service validates every 200 answer against these models (FastAPI's response_model), so
the description cannot drift from what is sent. Fields that an answer leaves out (a sample's
other formats, `auto` when the schedule was not auto) stay out of the JSON, not null.
The error answers share two bodies: {"detail": "<reason>"} and, for 422, one entry per bad
field. Serve's own proxy answers 503 (over capacity) and 408 (past its request timeout) in
plain text.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from nestgen.serving.stream import MASKED, MEDIA_TYPE

Format = Literal["png", "mp4", "tokens"]


class Sample(BaseModel):
    seed: int = Field(description="the seed this sample was drawn with (the request's seed + its index)")
    png: str | None = Field(None, description="base64 PNG (format png); a video sample is one picture of its frames side by side")
    mp4: str | None = Field(None, description="base64 MP4 (format mp4)")
    tokens: list[int] | None = Field(None, description="the token ids (format tokens)")


class AutoChoice(BaseModel):
    """How schedule 'auto' chose its preset."""
    queue_rows: int = Field(description="rows queued on the replica ahead of this request")
    pending_gflops: float | None = Field(None, description="batching step: the decode work the replica owes "
                                                          "ahead of this request (queued and running rows)")
    gflops_per_s: float | None = Field(None, description="batching step: the speed the replica's decode loop "
                                                        "measured (moving average over its steps)")
    target_s: float = Field(description="the latency target (serve.auto_latency_target_s)")
    expected_latency_s: float = Field(description="the chosen preset's expected latency, corrected")
    model_latency_s: float = Field(description="the latency model's uncorrected prediction")
    correction: float = Field(description="observed / predicted latency of recent requests")
    met_target: bool = Field(description="whether the expected latency is within the target")


class GenerateResponse(BaseModel):
    samples: list[Sample]
    format: Format
    class_label: int = Field(description="the class decoded (the null class id when the request's was null)")
    schedule: str = Field(description="the compact schedule decoded with, e.g. '8x3,4x3,2x3,1x3'")
    schedule_name: str = Field(description="the preset asked for (or chosen by auto), else 'custom'")
    steps: int
    cache: str
    guidance_scale: float
    temperature: float
    gflops_per_sample: float
    gflops: float = Field(description="gflops_per_sample x the request's samples")
    batching: Literal["step", "request"] = Field(description="how the replica batches (serve.batching)")
    batch_size: int = Field(description="rows decoded together with this request's: step, the most rows in flight "
                                        "in one of its steps (any schedules); request, its decode group (same "
                                        "schedule, cache policy and conditioning length)")
    decode_seconds: float = Field(description="step: seconds from joining the running set to its last step; "
                                              "request: seconds that batch's decode took")
    batch_requests: int = Field(description="step: the most requests in flight in one of its steps; request: "
                                            "requests in the Serve batch this request ran in")
    batch_rows: int = Field(description="step: as batch_size; request: rows in that Serve batch")
    queue_wait_seconds: float | None = Field(None, description="step: seconds it waited to join the running set")
    auto: AutoChoice | None = Field(None, description="present when the schedule was 'auto'")


class Preset(BaseModel):
    name: str
    schedule: str = Field(description="the preset as a compact schedule")
    steps: int
    cache: str
    gflops_per_sample: float
    gflops_per_sample_no_cache: float
    seconds_per_batch_of_1: float | None = Field(None, description="calibrated decode seconds of one sample "
                                                                   "(presets that auto chooses from)")
    seconds_per_full_batch: float | None = Field(None, description="calibrated decode seconds of a batch of "
                                                                   "serve.max_active_rows (batching step) or "
                                                                   "serve.max_batch_size (batching request) samples "
                                                                   "(limits in GET /v1/model)")


class AutoSettings(BaseModel):
    presets_best_first: list[str]
    target_s: float


class SchedulesResponse(BaseModel):
    default: str = Field(description="the checkpoint's decode.schedule, used when a request names none")
    presets: list[Preset]
    auto: AutoSettings | None = Field(description="null: schedule 'auto' is switched off")


class HealthResponse(BaseModel):
    status: Literal["ok", "stuck"] = Field(description="stuck: a decode (batching request) or one decode step "
                                                       "(batching step) has run past decode_deadline_s")
    queue_rows: int = Field(description="rows admitted and not yet answered")
    active_rows: int | None = Field(None, description="batching step: rows decoding in the step loop")
    queued_rows: int | None = Field(None, description="batching step: rows waiting to join it")
    decode_age_s: float = Field(description="seconds the decode in flight has run (0 when idle)")
    decode_deadline_s: float
    replica: str = Field(description="the answering replica's id")
    rss_mb: float = Field(description="the replica's resident memory")


class TokenizerInfo(BaseModel):
    url: str
    hash: str | None


class ModelConfigInfo(BaseModel):
    name: str
    model: dict[str, Any] = Field(description="the checkpoint's model config section")
    decode: dict[str, Any] = Field(description="the checkpoint's decode config section")


class Limits(BaseModel):
    batching: Literal["step", "request"]
    max_active_rows: int
    max_queued_rows: int
    max_samples_per_request: int
    max_batch_size: int
    batch_wait_timeout_s: float
    max_body_bytes: int
    decode_deadline_s: float
    max_condition_pixels: int
    max_condition_frames: int
    max_condition_seconds: float
    max_steps: int


class ModelResponse(BaseModel):
    checkpoint: str = Field(description="the checkpoint's resolved URL")
    kind: Literal["image", "video"]
    formats: list[Format] = Field(description="formats a request may ask for, the default first")
    device: str
    params: int
    tokenizer: TokenizerInfo | None = Field(description="null: the model decodes raw pixels (digits) or tokens only")
    cond_tokens: int = Field(description="leading tokens given as the condition (frame prediction); 0: none")
    num_classes: int
    config: ModelConfigInfo
    limits: Limits


class ErrorResponse(BaseModel):
    detail: str = Field(description="the reason, and what to change")


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where the bad value is, e.g. ['body', 'num_samples']")
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    detail: list[FieldError]


_ERRORS: dict[int, dict] = {
    400: {"model": ErrorResponse, "description": "well-formed, but asks for something this model or service "
                                                 "can't do (class, schedule, steps, format, conditioning clip)"},
    401: {"model": ErrorResponse, "description": "missing or wrong 'Authorization: Bearer <key>' "
                                                 "(only when serve.api_keys_env is set)"},
    413: {"model": ErrorResponse, "description": "body over serve.max_body_bytes"},
    422: {"model": ValidationErrorResponse, "description": "a field of the wrong type, out of range, or unknown"},
    500: {"model": ErrorResponse, "description": "the decode failed; the cause is in the replica's log"},
    408: {"description": "not answered within Serve's http_options.request_timeout_s; Serve's proxy answers in "
                         "plain text", "content": {"text/plain": {"schema": {"type": "string"}}}},
    503: {"description": "over capacity (serve.max_queued_requests) or no replica ready; Serve's proxy answers "
                         "in plain text, with Retry-After when it knows",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
}


def error_responses(*codes: int) -> dict[int, dict]:
    """The `responses=` of a route that can answer `codes`."""
    return {c: _ERRORS[c] for c in codes}


# POST /v1/generate's 503 can also come from the replica itself (serve.batching step): JSON.
GENERATE_503 = {503: {
    "model": ErrorResponse,
    "description": "over capacity: the replica's queue is full (serve.max_queued_rows; with Retry-After) or the "
                   "request ran past serve.decode_deadline_s; or the replica handling the request died before it "
                   "answered (with Retry-After: send it again); or, in plain text from Serve's proxy, over "
                   "serve.max_queued_requests or no replica ready",
    "content": {"text/plain": {"schema": {"type": "string"}}}}}


class StreamEvent(BaseModel):
    """One line of a streamed answer. Flat (no nested models), so that the OpenAPI
    description can carry its schema inline."""
    event: Literal["step", "result", "error"]
    step: int | None = Field(None, description="step: decoding steps done, 1..steps")
    steps: int | None = Field(None, description="step: the request's decoding steps K")
    schedule: str | None = Field(None, description="step: the compact schedule being decoded")
    seeds: list[int] | None = Field(None, description="step: each sample's seed")
    unmasked: list[int] | None = Field(None, description="step: each sample's tokens chosen so far")
    tokens: list[list[int]] | None = Field(None, description=f"step: each sample's token ids so far, {MASKED} "
                                                             "where still masked")
    result: dict[str, Any] | None = Field(None, description="result: the answer, the same body as without "
                                                            "stream (GenerateResponse)")
    status: int | None = Field(None, description="error: the HTTP status the failure would have had")
    detail: str | None = Field(None, description="error: the reason")


# The 200 answer's second content type, for the route's OpenAPI description.
STREAM_200 = {200: {"description": "the answer; with \"stream\": true, its events (one JSON object a line)",
                    "content": {MEDIA_TYPE: {"schema": StreamEvent.model_json_schema()}}}}
