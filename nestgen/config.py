"""The one config schema of nestgen: typed dataclasses, loaded from YAML strictly.

Every field has a default that runs the embedded digits example on a laptop CPU.
`load_config(path, overrides)` is the single entry point; `ConfigError` names the bad field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nestgen.configschema import ConfigError, check, flatten, from_dict, to_dict
from nestgen.tokenizers.config import TokenizerConfig

__all__ = [
    "ConfigError", "ModelConfig", "TrainConfig", "DecodeConfig", "DataConfig", "TokenizeConfig",
    "TokenizerConfig", "ScalingConfig", "MlflowConfig", "ServeConfig", "EvaluateConfig", "SearchConfig", "PipelineConfig", "NestgenConfig",
    "load_config", "config_from_dict", "config_to_dict", "flatten",
]


@dataclass
class ModelConfig:
    """The nested bidirectional transformer over a token grid."""
    vocab_size: int = 17            # codebook size; the [MASK] id is vocab_size
    grid: list[int] = field(default_factory=lambda: [8, 8])   # [H, W] images, [T, H, W] video
    num_classes: int = 10           # class id num_classes is the null class (guidance)
    width: int = 256                # D of the full model
    depth: int = 4
    heads: int = 8                  # head dim = width / heads, the same in every nested size
    mlp_ratio: int = 4
    nest_factors: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    attention_width: Literal["nested", "full"] = "nested"   # full: attention at D (all heads), MLP sliced
    output_head: Literal["tied", "separate"] = "tied"

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def null_class(self) -> int:
        return self.num_classes

    def sub_width(self, factor: int) -> int:
        return self.width // factor

    def validate(self) -> None:
        check(self.vocab_size >= 2, "vocab_size", f"must be >= 2, got {self.vocab_size}")
        check(len(self.grid) in (2, 3), "grid", f"must be [H, W] or [T, H, W], got {self.grid}")
        check(all(g >= 1 for g in self.grid), "grid", f"sizes must be >= 1, got {self.grid}")
        check(self.num_classes >= 0, "num_classes", "must be >= 0")
        check(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        check(self.heads >= 1, "heads", f"must be >= 1, got {self.heads}")
        check(self.width >= 1 and self.width % self.heads == 0, "width",
              f"must be a positive multiple of heads={self.heads}, got {self.width}")
        check(self.mlp_ratio >= 1, "mlp_ratio", f"must be >= 1, got {self.mlp_ratio}")
        nf = self.nest_factors
        check(len(nf) >= 1 and len(set(nf)) == len(nf), "nest_factors", f"must be distinct, got {nf}")
        check(1 in nf, "nest_factors", f"must include 1 (the full model), got {nf}")
        for f in nf:
            check(f >= 1 and self.heads % f == 0, "nest_factors",
                  f"factor {f} must divide heads={self.heads} (head dim stays fixed)")


@dataclass
class DistillConfig:
    schedule: Literal["linear", "fixed", "off"] = "linear"   # lambda: 1->0 | value | 1 (no KD)
    value: float = 0.5                                       # lambda when schedule == fixed

    def validate(self) -> None:
        check(0.0 <= self.value <= 1.0, "value", f"must be in [0, 1], got {self.value}")


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.96])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05       # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    class_dropout: float = 0.1       # share of labels replaced by the null class
    distill: DistillConfig = field(default_factory=DistillConfig)
    sizes_per_step: str = "all"      # "all" or "sample:k" (k smaller sizes; full always runs)
    grad_accum: int = 1
    ema_decay: float = 0.0           # 0 disables the EMA of weights
    cond_tokens: int = 0             # leading grid tokens that are never masked (frame prediction)
    log_every: int = 50
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    precision: Literal["fp32", "bf16"] = "fp32"   # bf16 = autocast on CUDA

    def num_sampled_sizes(self) -> int | None:
        """None for all sizes, else k from 'sample:k'."""
        if self.sizes_per_step == "all":
            return None
        return int(self.sizes_per_step.split(":", 1)[1])

    def validate(self) -> None:
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
              f"must be two numbers in [0, 1), got {self.betas}")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables)")
        check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        check(0 <= self.class_dropout <= 1, "class_dropout", "must be in [0, 1]")
        ok = self.sizes_per_step == "all"
        if self.sizes_per_step.startswith("sample:"):
            k = self.sizes_per_step.split(":", 1)[1]
            ok = k.isdigit() and int(k) >= 1
        check(ok, "sizes_per_step", f"must be 'all' or 'sample:k' with k >= 1, got {self.sizes_per_step!r}")
        check(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        check(self.cond_tokens >= 0, "cond_tokens", "must be >= 0")
        check(self.log_every >= 1, "log_every", "must be >= 1")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
              f"must be auto, cpu or cuda[:i], got {self.device!r}")


@dataclass
class DecodeConfig:
    """MaskGIT decoding with a decode-time model schedule (see nestgen.decoding.schedule)."""
    schedule: str = "magnets"        # preset name or compact string, e.g. "8x3,4x3,2x3,1x3"
    steps: int = 12                  # K; the schedule must add up to it
    cache: str = "on_switch"         # none | on_switch | never_within_size | every:r
    temperature: float = 1.0         # token sampling temperature
    temperature_schedule: Literal["constant", "linear"] = "constant"
    choice_temperature: float = 4.5  # Gumbel noise on confidences x (1 - (t+1)/K) at step t
    guidance_scale: float = 0.0      # logits = (1+g) cond - g uncond; 0 skips the uncond pass
    guidance_schedule: Literal["constant", "linear", "cosine"] = "constant"

    def validate(self) -> None:
        from nestgen.decoding.cache_policy import parse_cache_policy
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(self.choice_temperature >= 0, "choice_temperature", "must be >= 0")
        check(self.guidance_scale >= 0, "guidance_scale", "must be >= 0")
        try:
            parse_cache_policy(self.cache)
        except ValueError as e:
            raise ConfigError(f"cache: {e}") from None


@dataclass
class DataConfig:
    """Where training tokens come from: `digits` = scikit-learn digits as an 8x8 grid with
    vocab 17 (no tokenizer); `shards` = Parquet token shards written by `nestgen tokenize`."""
    source: Literal["digits", "shards"] = "digits"
    url: str = ""                    # shard folder (holding manifest.json) when source == shards
    holdout_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        check(0 <= self.holdout_fraction < 1, "holdout_fraction", "must be in [0, 1)")
        check(self.source != "shards" or bool(self.url), "url", "is required when source is 'shards'")


@dataclass
class TokenizeConfig:
    """The Ray tokenization step: raw files -> Parquet token shards (pipelines.tokenize)."""
    batch_size: int = 64             # files per tokenizer call
    concurrency: int = 1             # tokenizer actors (each loads the tokenizer once)
    gpus_per_actor: float = 1.0      # used only when the cluster has GPUs
    cpus_per_actor: float = 1.0
    fps: float = 8.0                 # videos are resampled to this rate
    clips_per_video: int = 1         # up to this many non-overlapping clips per video
    rows_per_shard: int = 4096

    def validate(self) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.concurrency >= 1, "concurrency", "must be >= 1")
        check(self.gpus_per_actor >= 0, "gpus_per_actor", "must be >= 0")
        check(self.cpus_per_actor > 0, "cpus_per_actor", "must be > 0")
        check(self.fps >= 0, "fps", "must be >= 0 (0 keeps the source rate)")
        check(self.clips_per_video >= 1, "clips_per_video", "must be >= 1")
        check(self.rows_per_shard >= 1, "rows_per_shard", "must be >= 1")


@dataclass
class ScalingConfig:
    """Ray Train workers (pipelines.train). GPU when the cluster has one and use_gpu allows."""
    num_workers: int = 2
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"   # Ray Train's prepare_model parallel strategy
    cpus_per_worker: float = 1.0
    checkpoint_every: int = 200      # optimizer steps between checkpoints (and at the end)
    keep_checkpoints: int = 2
    max_failures: int = 2            # worker failures survived by restoring the last checkpoint
    shuffle_buffer: int = 2048       # rows in each worker's local shuffle buffer

    def validate(self) -> None:
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        check(self.shuffle_buffer >= 0, "shuffle_buffer", "must be >= 0")


@dataclass
class MlflowConfig:
    tracking_uri: str = ""           # "" -> $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str = "nestgen"
    sample_grid_every: int = 0       # also log sample grids every N steps (0: only at the end)
    registered_model: str = ""       # register each trained checkpoint as a version of this model
    registered_alias: str = ""       # and point this alias at it (e.g. production: models:/<name>@production)

    def resolved_uri(self) -> str:
        import os
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{os.path.abspath('mlflow.db')}"

    def validate(self) -> None:
        check(bool(self.experiment), "experiment", "must not be empty")
        check(self.sample_grid_every >= 0, "sample_grid_every", "must be >= 0")


@dataclass
class SearchConfig:
    """Schedule search under a GFLOPs budget (nestgen.evaluation.search): candidates are
    every split of K steps over the nest factors (small -> large) x cache policies; those
    within budget are scored on held-out seeds and the best is evaluated with the rest."""
    enabled: bool = True
    budget_gflops: float = 0.0       # per sample; 0 -> budget_fraction x the baseline's
    budget_fraction: float = 0.34    # ~3x fewer GFLOPs than the full model, the paper's target
    steps: list[int] = field(default_factory=lambda: [12])
    caches: list[str] = field(default_factory=lambda: ["none", "on_switch"])
    max_candidates: int = 8          # scored candidates (the most compute first, spread over shapes)
    num_samples: int = 200
    seed: int = 1_000_000            # sample seeds disjoint from the final evaluation's

    def validate(self) -> None:
        check(self.budget_gflops >= 0, "budget_gflops", "must be >= 0")
        check(0 < self.budget_fraction <= 1, "budget_fraction", "must be in (0, 1]")
        check(len(self.steps) >= 1 and all(k >= 1 for k in self.steps), "steps", "must be >= 1 each")
        check(self.max_candidates >= 1, "max_candidates", "must be >= 1")
        check(self.num_samples >= 2, "num_samples", "must be >= 2")
        _check_caches(self.caches)


def _check_caches(caches: list[str]) -> None:
    from nestgen.decoding.cache_policy import parse_cache_policy
    check(len(caches) >= 1, "caches", "must not be empty")
    for c in caches:
        try:
            parse_cache_policy(c)
        except ValueError as e:
            raise ConfigError(f"caches: {e}") from None


@dataclass
class EvaluateConfig:
    """The evaluation step (pipelines.evaluate): quality against GFLOPs for every variant
    schedule x cache x guidance_scale, with the same labels and seeds for each."""
    checkpoint: str = ""             # file, output folder, fsspec URL, runs:/<id>; "" -> the pipeline's
    schedules: list[str] = field(default_factory=lambda: ["baseline", "magnets", "magnets-lite",
                                                          "magnets-2", "large-first"])
    caches: list[str] = field(default_factory=lambda: ["none", "on_switch"])
    guidance_scales: list[float] = field(default_factory=lambda: [0.0])
    num_samples: int = 500
    seed: int = 0                    # sample i of every variant uses seed + i
    batch_size: int = 250
    num_workers: int = 1             # Ray actors sharing the variants (GPU each when present)
    cpus_per_worker: float = 2.0
    metrics: list[str] = field(default_factory=lambda: ["auto"])   # auto | fid is fvd fd_digits ...
    quality_metric: str = "auto"     # the one on the plot and in the search; auto: fid/fvd if available
    reference_stats: str = ""        # .npz (mu, sigma) for FID/FVD; "" -> held-out split through the tokenizer
    feature_net: str = ""            # Inception / I3D TorchScript path; "" -> env var or cache
    grid_samples: int = 40           # samples in each variant's grid (and video)
    search: SearchConfig = field(default_factory=SearchConfig)

    def validate(self) -> None:
        check(len(self.schedules) >= 1, "schedules", "must not be empty")
        _check_caches(self.caches)
        check(len(self.guidance_scales) >= 1 and all(g >= 0 for g in self.guidance_scales),
              "guidance_scales", "must be >= 0 each")
        check(self.num_samples >= 2, "num_samples", "must be >= 2 (a covariance needs two samples)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.grid_samples >= 1, "grid_samples", "must be >= 1")


@dataclass
class ServeConfig:
    """The HTTP generation service (pipelines.serve): what each replica loads, how it batches,
    its limits, and the replicas' resources. Host and port are Serve's `http_options`."""
    checkpoint: str = "runs/pipeline"  # file, output folder (LATEST), fsspec URL, runs:/<id>, models:/<name>/<v>
    tokenizer: str = ""              # tokenizer URL; "" -> the checkpoint's shard tokenizer (none: raw digits)
    mlflow_tracking_uri: str = ""    # for runs:/ and models:/ ("" -> $MLFLOW_TRACKING_URI, ./mlflow.db)
    device: str = "auto"             # auto: CUDA when the replica has a GPU
    max_batch_size: int = 32         # rows (samples) per batched decode
    batch_wait_timeout_s: float = 0.02
    max_ongoing_requests: int = 64   # per replica; >= max_batch_size (Serve's default of 5 caps batches)
    max_queued_requests: int = -1    # requests waiting for a replica beyond that (-1: no cap; else 503)
    max_samples_per_request: int = 16
    max_steps: int = 0               # decoding steps a request may ask for; 0 -> 4 x the checkpoint's decode.steps
    max_body_bytes: int = 4_000_000  # larger bodies get 413
    decode_deadline_s: float = 300.0  # a decode running longer fails the replica's health check (Serve replaces it)
    api_keys_env: str = ""           # env var holding accepted bearer tokens (comma-separated); "" -> no auth
    video_fps: int = 8               # frame rate of returned MP4s
    auto_presets: list[str] = field(default_factory=lambda: ["baseline", "magnets", "magnets-lite"])
    auto_latency_target_s: float = 1.0   # schedule "auto": best preset expected within this latency
    num_replicas: int = 1
    max_replicas: int = 0            # > num_replicas: autoscale between the two
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    def validate(self) -> None:
        from nestgen.decoding.schedule import PRESETS
        check(bool(self.checkpoint), "checkpoint", "must name a checkpoint")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
              f"must be auto, cpu or cuda[:i], got {self.device!r}")
        check(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        check(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s", "must be >= 0")
        check(self.max_ongoing_requests >= self.max_batch_size, "max_ongoing_requests",
              f"must be >= max_batch_size={self.max_batch_size}, or batches never fill")
        check(self.max_queued_requests == -1 or self.max_queued_requests >= 1, "max_queued_requests",
              "must be -1 (no cap) or >= 1")
        check(1 <= self.max_samples_per_request <= self.max_batch_size, "max_samples_per_request",
              f"must be in [1, max_batch_size={self.max_batch_size}] (a request runs in one batch)")
        check(self.max_steps >= 0, "max_steps", "must be >= 0 (0: 4 x the checkpoint's decode.steps)")
        check(self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024")
        check(self.decode_deadline_s > 0, "decode_deadline_s", "must be > 0")
        check(self.video_fps >= 1, "video_fps", "must be >= 1")
        unknown = [p for p in self.auto_presets if p not in PRESETS]
        check(not unknown, "auto_presets", f"unknown preset(s) {unknown}; presets: {sorted(PRESETS)}")
        check(self.auto_latency_target_s > 0, "auto_latency_target_s", "must be > 0")
        check(self.num_replicas >= 1, "num_replicas", "must be >= 1")
        check(self.max_replicas == 0 or self.max_replicas >= self.num_replicas, "max_replicas",
              f"must be 0 (fixed) or >= num_replicas={self.num_replicas}")
        check(self.cpus_per_replica > 0, "cpus_per_replica", "must be > 0")
        check(self.gpus_per_replica >= 0, "gpus_per_replica", "must be >= 0")


@dataclass
class PipelineConfig:
    """The workflow DAG (pipelines.dag): data -> tokenizer -> tokenize -> train -> evaluate ->
    serve. Every step writes under output_url/<step>-<fingerprint>/ with a completion
    marker written last; steps not applicable to the config (no tokenizer for the raw
    digits) are left out of the DAG."""
    output_url: str = "runs/pipeline"   # local path or any fsspec URL (gs://...)
    raw_data: str = ""                  # raw media folder (<split>/<class>/<file>); "" -> write `dataset`
    dataset: Literal["digits", "moving-digits"] = "digits"   # the embedded set the data step writes
    data_size: int = 32                 # pixels of the embedded images / frames
    clips_per_class: int = 40           # moving-digits clips per class
    frames: int = 16                    # moving-digits frames per clip
    tokenizer: str = ""                 # an existing tokenizer checkpoint: skips tokenizer training
    serve: bool = True                  # the last step: deploy on Serve locally, request a sample, stop
    retries: int = 2                    # extra attempts of a step after a transient failure
    retry_backoff_s: float = 5.0

    def validate(self) -> None:
        check(bool(self.output_url), "output_url", "must not be empty")
        check(self.data_size >= 8, "data_size", "must be >= 8")
        check(self.clips_per_class >= 1, "clips_per_class", "must be >= 1")
        check(self.frames >= 1, "frames", "must be >= 1")
        check(self.retries >= 0, "retries", "must be >= 0")
        check(self.retry_backoff_s >= 0, "retry_backoff_s", "must be >= 0")


@dataclass
class NestgenConfig:
    name: str = "digits"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def validate(self) -> None:
        from nestgen.decoding.schedule import resolve_schedule
        try:
            resolve_schedule(self.decode.schedule, self.model.nest_factors, self.decode.steps)
        except ValueError as e:
            raise ConfigError(f"decode.schedule: {e}") from None
        check(self.train.cond_tokens < self.model.num_tokens, "train.cond_tokens",
              f"must be < the grid's {self.model.num_tokens} tokens")


def _apply_override(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = d
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {k} is not a section")
    node[keys[-1]] = value


def config_from_dict(data: dict | None, overrides: list[str] | None = None) -> NestgenConfig:
    """`overrides` are 'a.b=value' strings; value is parsed as YAML (so 3, 1e-3, [1,2] work)."""
    data = dict(data or {})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _apply_override(data, key.strip(), yaml.safe_load(raw))
    return from_dict(NestgenConfig, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> NestgenConfig:
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    return config_from_dict(data, overrides)


def config_to_dict(cfg: NestgenConfig) -> dict:
    return to_dict(cfg)
