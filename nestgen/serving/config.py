"""The engine's config section: what a replica of the generation service loads, how it
batches and its limits; everything `nestgen.serving.engine.Engine` reads. The Serve app's
own settings (HTTP limits, replicas and their resources) extend it in pipelines.config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nestgen.configschema import check
from nestgen.data.media import VideoLimits
from nestgen.decoding.schedule import PRESETS
from nestgen.device import check_device


@dataclass
class EngineConfig:
    """What each replica's Engine loads, how it batches and its limits (the `serve:` section
    holds these and the Serve app's fields: pipelines.config.ServeConfig)."""
    checkpoint: str = "runs/pipeline/digits-vq"  # (make demo's LATEST) file, output folder (LATEST), fsspec URL, runs:/<id>, models:/<name>/<v>
    tokenizer: str = ""              # tokenizer URL; "" -> the checkpoint's shard tokenizer (none: raw digits)
    device: str = "auto"             # auto: CUDA when the replica has a GPU
    batching: Literal["step", "request"] = "step"   # step: rows join/leave between decode steps; request: @serve.batch whole decodes
    max_active_rows: int = 32        # batching step: rows decoding at once on a replica (the rest wait in its queue)
    max_queued_rows: int = 256       # batching step: rows waiting to join; beyond, 503 with Retry-After
    retry_after_s: int = 1           # batching step: the Retry-After (seconds) of that 503
    max_batch_size: int = 32         # batching request: rows (samples) per batched decode
    max_samples_per_request: int = 16
    max_steps: int = 0               # decoding steps a request may ask for; 0 -> 4 x the checkpoint's decode.steps
    decode_deadline_s: float = 300.0  # request: a decode running longer fails the health check (Serve replaces the replica); step: a request older is answered 503, a step running longer fails the health check
    # A conditioning MP4's budget, checked from its header before decoding (400 when over);
    # only the frames the conditioning needs are decoded.
    max_condition_pixels: int = 1920 * 1080   # conditioning MP4: width x height of a frame
    max_condition_frames: int = 600           # conditioning MP4: frames its header claims
    max_condition_seconds: float = 60.0       # conditioning MP4: duration its header claims
    video_fps: int = 8               # frame rate of returned MP4s
    auto_presets: list[str] = field(default_factory=lambda: ["baseline", "magnets", "magnets-lite"])
    auto_latency_target_s: float = 1.0   # schedule "auto": best preset expected within this latency

    def condition_limits(self) -> VideoLimits:
        return VideoLimits(self.max_condition_pixels, self.max_condition_frames, self.max_condition_seconds)

    def validate(self) -> None:
        check(bool(self.checkpoint), "checkpoint", "must name a checkpoint")
        check_device(self.device)
        check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        check(1 <= self.max_samples_per_request <= self.max_batch_size, "max_samples_per_request",
              f"must be in [1, max_batch_size={self.max_batch_size}] (a request runs in one batch)")
        check(self.max_active_rows >= self.max_samples_per_request, "max_active_rows",
              f"must be >= max_samples_per_request={self.max_samples_per_request} (a request joins whole)")
        check(self.max_queued_rows >= self.max_samples_per_request, "max_queued_rows",
              f"must be >= max_samples_per_request={self.max_samples_per_request}")
        check(self.retry_after_s >= 1, "retry_after_s", "must be >= 1")
        check(self.max_steps >= 0, "max_steps", "must be >= 0 (0: 4 x the checkpoint's decode.steps)")
        check(self.decode_deadline_s > 0, "decode_deadline_s", "must be > 0")
        for name in ("max_condition_pixels", "max_condition_frames", "max_condition_seconds"):
            check(getattr(self, name) > 0, name, "must be > 0")
        check(self.video_fps >= 1, "video_fps", "must be >= 1")
        unknown = [p for p in self.auto_presets if p not in PRESETS]
        check(not unknown, "auto_presets", f"unknown preset(s) {unknown}; presets: {sorted(PRESETS)}")
        check(self.auto_latency_target_s > 0, "auto_latency_target_s", "must be > 0")


# The name MLflow models logged before the engine's section was split from the Serve app's import
# (their copy of pipelines/mlflow_model.py builds ServeConfig(checkpoint=..., tokenizer=..., auto_presets=[])).
ServeConfig = EngineConfig
