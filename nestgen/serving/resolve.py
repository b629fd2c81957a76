"""Request -> Job: every check that depends on the served model and the service's limits.

Each failure is a RequestError whose message says what was wrong and what is allowed, so a
client can fix its request without reading the server's logs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nestgen.decoding.cache_policy import parse_cache_policy
from nestgen.decoding.config import DecodeConfig
from nestgen.model.config import ModelConfig
from nestgen.configschema import ConfigError, from_dict, to_dict
from nestgen.decoding.schedule import PRESETS, resolve_schedule
from nestgen.serving.job import Job
from nestgen.serving.request import GenerateRequest, RequestError

AUTO = "auto"


@dataclass(frozen=True)
class ModelSpec:
    """What request validation needs to know about the served model."""
    model: ModelConfig
    decode: DecodeConfig              # the checkpoint's decode settings: the request defaults
    cond_tokens: int                  # leading tokens given for frame prediction (0: none)
    formats: tuple[str, ...]          # formats this model can answer in
    max_samples: int                  # serve.max_samples_per_request
    max_steps: int                    # decoding steps a request may ask for (serve.max_steps)

    @property
    def kind(self) -> str:
        return "video" if self.model.is_video else "image"

    @property
    def default_format(self) -> str:
        return self.formats[0]


def _labels(req: GenerateRequest, m: ModelConfig) -> list[int]:
    if req.class_label is None:
        return [m.null_class] * req.num_samples
    if not 0 <= req.class_label < m.num_classes:
        allowed = f"0..{m.num_classes - 1} or null" if m.num_classes else "only null (unconditional model)"
        raise RequestError(f"class_label {req.class_label} is out of range: this model takes {allowed}")
    return [req.class_label] * req.num_samples


# Float settings are rounded to 0.01 (as the API documents): the response reports the value
# that ran, so a sample can be reproduced from the response alone.
FLOAT_DECIMALS = 2


def _steps_cap(steps: int, spec: ModelSpec) -> None:
    if steps > spec.max_steps:
        raise RequestError(f"{steps} decoding steps is above this service's cap of {spec.max_steps} "
                           "(serve.max_steps)")


def _decode_config(req: GenerateRequest, spec: ModelSpec, schedule: str) -> DecodeConfig:
    d = to_dict(spec.decode)
    if req.steps is not None:
        _steps_cap(req.steps, spec)
    try:
        # Parsing is bounded by the schedule's length; nothing is sized by its steps before the cap.
        sched = resolve_schedule(schedule, spec.model.nest_factors, req.steps)
    except ValueError as e:
        raise RequestError(f"schedule: {e}") from None
    _steps_cap(sched.steps, spec)
    d.update(schedule=str(sched), steps=sched.steps)
    for key in ("guidance_scale", "temperature"):
        if getattr(req, key) is not None:
            d[key] = round(getattr(req, key), FLOAT_DECIMALS)
    # The canonical spelling (" on_switch", "never_within_size" -> "on_switch"): requests are
    # grouped by it, and the response reports it.
    cache = d["cache"] if req.cache is None else req.cache
    try:
        d["cache"] = str(parse_cache_policy(cache))
    except ValueError as e:
        raise RequestError(f"cache: {e}") from None
    try:
        return from_dict(DecodeConfig, d)
    except ConfigError as e:
        raise RequestError(str(e)) from None


def resolve_request(req: GenerateRequest, spec: ModelSpec,
                    choose_auto: Callable[[int], tuple[str, dict]] | None = None) -> Job:
    """Validate `req` against the model; `choose_auto(rows)` picks the preset for "auto"
    (None: auto is switched off). Conditioning tokens are attached later (they need the
    tokenizer): here only whether the model takes them is checked."""
    if req.num_samples > spec.max_samples:
        raise RequestError(f"num_samples {req.num_samples} is above this service's cap of "
                           f"{spec.max_samples} per request")
    labels = _labels(req, spec.model)
    fmt = req.format or spec.default_format
    if fmt not in spec.formats:
        raise RequestError(f"format {fmt!r} is not available for this {spec.kind} model; "
                           f"choose one of {', '.join(spec.formats)}")
    if req.condition is not None and spec.cond_tokens == 0:
        raise RequestError("condition: this model was not trained for frame prediction "
                           "(its train.cond_tokens is 0)")
    name = (spec.decode.schedule if req.schedule is None else req.schedule).strip()
    auto = None
    if name == AUTO:
        if choose_auto is None:
            raise RequestError("schedule 'auto' is switched off on this service (serve.auto_presets is empty)")
        if req.steps is not None:
            raise RequestError("steps: leave it out with schedule 'auto' (each preset has its own)")
        name, auto = choose_auto(req.num_samples)
    d = _decode_config(req, spec, name)
    return Job(labels=labels, seeds=[req.seed + i for i in range(req.num_samples)], decode=d,
               schedule_name=_preset_name(name, d.schedule), format=fmt, auto=auto)


def _preset_name(asked: str, schedule: str) -> str:
    """The preset asked for, or the one a compact string spells out, else "custom"."""
    if asked in PRESETS:
        return asked
    return next((n for n, text in PRESETS.items() if text == schedule), "custom")
