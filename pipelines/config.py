"""The config of a pipeline run, composed here: what a checkpoint needs
(nestgen.config.NestgenConfig), the evaluate and serve sections (the library's
EvaluateConfig and EngineConfig, each extended with what only its Ray step reads: which
checkpoint, actors, replicas and their resources, the Serve app's HTTP limits), and the
orchestration sections only the Ray steps read (tokenize, scaling, mlflow, pipeline).

Loaded by the same strict loader as the library's config (`schema=RunConfig`); the library
never sees these sections, and checkpoints it reads back are loaded by their library part.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from nestgen.config import NestgenConfig, config_from_dict, load_config
from nestgen.configschema import check
from nestgen.data.media import VideoLimits
from nestgen.evaluation.config import EvaluateConfig
from nestgen.serving.config import EngineConfig


@dataclass
class EvaluateStepConfig(EvaluateConfig):
    """The evaluation step (pipelines.evaluate): the library's evaluation (every variant's
    quality against GFLOPs) on an actor pool."""
    checkpoint: str = ""             # file, output folder, fsspec URL, runs:/<id>; "" -> the pipeline's
    num_workers: int = 1             # Ray actors sharing the variants (GPU each when present)
    cpus_per_worker: float = 2.0

    def validate(self) -> None:
        super().validate()
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")


@dataclass
class ServeConfig(EngineConfig):
    """The HTTP generation service (pipelines.serve): what each replica's engine loads, how it
    batches and its limits (the library's EngineConfig), and the Serve app's own settings:
    its HTTP limits, the replicas and their resources. Host and port are Serve's `http_options`."""
    mlflow_tracking_uri: str = ""    # for runs:/ and models:/ ("" -> $MLFLOW_TRACKING_URI, ./mlflow.db)
    batch_wait_timeout_s: float = 0.02   # batching request: how long a batch waits to fill
    max_ongoing_requests: int = 64   # per replica; >= max_batch_size (Serve's default of 5 caps batches)
    max_queued_requests: int = -1    # requests waiting for a replica beyond that (-1: no cap; else 503)
    max_body_bytes: int = 4_000_000  # larger bodies get 413
    api_keys_env: str = ""           # env var holding accepted bearer tokens (comma-separated); "" -> no auth
    num_replicas: int = 1
    max_replicas: int = 0            # > num_replicas: autoscale between the two
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    def validate(self) -> None:
        super().validate()
        check(self.batch_wait_timeout_s >= 0, "batch_wait_timeout_s", "must be >= 0")
        check(self.max_ongoing_requests >= self.max_batch_size, "max_ongoing_requests",
              f"must be >= max_batch_size={self.max_batch_size}, or batches never fill")
        check(self.max_queued_requests == -1 or self.max_queued_requests >= 1, "max_queued_requests",
              "must be -1 (no cap) or >= 1")
        check(self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024")
        check(self.num_replicas >= 1, "num_replicas", "must be >= 1")
        check(self.max_replicas == 0 or self.max_replicas >= self.num_replicas, "max_replicas",
              f"must be 0 (fixed) or >= num_replicas={self.num_replicas}")
        check(self.cpus_per_replica > 0, "cpus_per_replica", "must be > 0")
        check(self.gpus_per_replica >= 0, "gpus_per_replica", "must be >= 0")


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
    # Budgets per file, checked from the listing and the header before decoding; a file over
    # one is a manifest failure. Files are streamed to the decoders, never read whole, and
    # only a video's first clips are decoded, however long it is.
    max_file_bytes: int = 2 * 1024**3      # the size a file's storage lists (2 GiB: 10 min of 4K at 25 Mbit/s)
    max_image_pixels: int = 40_000_000     # width x height an image's header may claim (else a failure row)
    max_video_pixels: int = 3840 * 2160    # width x height of a video frame, from the stream header
    max_video_frames: int = 18_000         # frames a video's header may claim (and frames decoded)
    max_video_seconds: float = 600.0       # duration a video's header may claim
    # An index file's rows name files under the index's folder. Its absolute paths and URLs
    # (gs://, https://, ...) are failure rows unless this is on: rows often come from label
    # files shipped with a download, and must not make workers read other files or fetch URLs.
    allow_external_urls: bool = False      # index rows may name absolute paths and URLs (else failure rows)

    def video_limits(self) -> VideoLimits:
        return VideoLimits(self.max_video_pixels, self.max_video_frames, self.max_video_seconds)

    def validate(self) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.concurrency >= 1, "concurrency", "must be >= 1")
        check(self.gpus_per_actor >= 0, "gpus_per_actor", "must be >= 0")
        check(self.cpus_per_actor > 0, "cpus_per_actor", "must be > 0")
        check(self.fps >= 0, "fps", "must be >= 0 (0 keeps the source rate)")
        check(self.clips_per_video >= 1, "clips_per_video", "must be >= 1")
        check(self.rows_per_shard >= 1, "rows_per_shard", "must be >= 1")
        for name in ("max_file_bytes", "max_image_pixels", "max_video_pixels", "max_video_frames",
                     "max_video_seconds"):
            check(getattr(self, name) > 0, name, "must be > 0")


@dataclass
class ScalingConfig:
    """Ray Train workers (pipelines.train). GPU when the cluster has one and use_gpu allows."""
    num_workers: int = 2
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    strategy: Literal["ddp", "fsdp"] = "ddp"   # generator: ddp, or fsdp (FSDP2: each worker keeps 1/num_workers of weights, grads, AdamW state, EMA); tokenizers: ddp
    cpus_per_worker: float = 1.0
    checkpoint_every: int = 200      # optimizer steps between checkpoints (and at the end)
    keep_checkpoints: int = 2
    max_failures: int = 2            # worker failures survived by restoring the last checkpoint; also worker-group starts that time out (a lost node's resources) before the step fails
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
    system_metrics_every_s: float = 10.0   # CPU/memory/GPU of training and evaluation runs, sampled this often (0: off)

    def resolved_uri(self) -> str:
        """The one default of the tracking URI: tracking_uri, else $MLFLOW_TRACKING_URI, else
        mlflow.db (SQLite) in the working directory (see local_base)."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{os.path.join(local_base(), 'mlflow.db')}"

    def validate(self) -> None:
        check(bool(self.experiment), "experiment", "must not be empty")
        check(self.sample_grid_every >= 0, "sample_grid_every", "must be >= 0")
        check(self.system_metrics_every_s >= 0, "system_metrics_every_s", "must be >= 0 (0: off)")


@dataclass
class PipelineConfig:
    """The workflow DAG (pipelines.dag): data -> tokenizer -> tokenize -> train -> evaluate ->
    serve. Every step writes under output_url/<step>-<fingerprint>/ with a completion
    marker written last; steps not applicable to the config (no tokenizer for the raw
    digits) are left out of the DAG."""
    output_url: str = "runs/pipeline"   # local path or any fsspec URL (gs://...)
    raw_data: str = ""                  # raw media folder (<split>/<class>/<file>) or index (*.csv, *.jsonl); "" -> write `dataset`
    dataset: Literal["digits", "moving-digits"] = "digits"   # the embedded set the data step writes
    data_size: int = 32                 # pixels of the embedded images / frames
    clips_per_class: int = 40           # moving-digits clips per class
    frames: int = 16                    # moving-digits frames per clip
    tokenizer: str = ""                 # an existing tokenizer (checkpoint or diffusers VQModel folder): not trained
    serve: bool = True                  # the last step: deploy on Serve locally, request a sample, stop
    seeds: list[int] = field(default_factory=list)   # >= 2: a train -> evaluate branch per seed, then `seeds` (mean, 95% t interval)
    parallel_steps: int = 1             # steps run at once when their inputs are ready (the seeds' branches); 1 on one machine
    retries: int = 2                    # extra attempts of a step after a transient failure
    retry_backoff_s: float = 5.0
    lease_ttl_s: float = 300.0          # the output folder's lease: a run killed without releasing it is taken over this long after its last renewal

    def validate(self) -> None:
        check(bool(self.output_url), "output_url", "must not be empty")
        check(self.data_size >= 8, "data_size", "must be >= 8")
        check(self.clips_per_class >= 1, "clips_per_class", "must be >= 1")
        check(self.frames >= 1, "frames", "must be >= 1")
        check(not self.seeds or (len(self.seeds) >= 2 and len(set(self.seeds)) == len(self.seeds)), "seeds",
              f"must be empty (one model, the top-level seed) or >= 2 distinct seeds, got {self.seeds}")
        check(self.parallel_steps >= 1, "parallel_steps", "must be >= 1")
        check(self.retries >= 0, "retries", "must be >= 0")
        check(self.retry_backoff_s >= 0, "retry_backoff_s", "must be >= 0")
        check(self.lease_ttl_s >= 3, "lease_ttl_s", "must be >= 3 (renewed every ttl/3 seconds)")


@dataclass
class RunConfig(NestgenConfig):
    """Everything a pipeline run reads: what a checkpoint needs (NestgenConfig), how it is
    evaluated and served, and the orchestration sections."""
    evaluate: EvaluateStepConfig = field(default_factory=EvaluateStepConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


def run_config_from_dict(data: dict | None, overrides: list[str] | None = None) -> RunConfig:
    return config_from_dict(data, overrides, schema=RunConfig)


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    return load_config(path, overrides, schema=RunConfig)


# `ray job submit --working-dir DIR` runs the entrypoint in a temporary copy of DIR, deleted
# with the Ray session: outputs written there relative to the working directory are lost.
JOB_COPY_MARK = f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}"
JOB_HOME = "~/nestgen-runs"


def local_base() -> str:
    """Where relative output locations and the default mlflow.db go: the working directory,
    except inside a Ray job's temporary copy of it, where they go under ~/nestgen-runs."""
    cwd = os.getcwd()
    return os.path.expanduser(JOB_HOME) if JOB_COPY_MARK in cwd + os.sep else cwd


def outside_job_copy(cfg: RunConfig) -> RunConfig:
    """cfg with a relative local pipeline.output_url anchored at local_base()."""
    url = cfg.pipeline.output_url
    if "://" in url or os.path.isabs(url) or local_base() == os.getcwd():
        return cfg
    return replace(cfg, pipeline=replace(cfg.pipeline, output_url=os.path.join(local_base(), url)))


# Names the shipped cluster files and docs ask users to replace (infra/README.md), and the
# usual spellings of a template's blank.
PLACEHOLDER = re.compile(r"NESTGEN_BUCKET|PROJECT_ID|\b(?:YOUR|your)[-_][\w-]+|<[A-Za-z][\w -]*>|\bCHANGE_?ME\b")


def placeholders(cfg: RunConfig) -> list[str]:
    """'section.field=value' for every string field that still holds a placeholder."""
    from nestgen.configschema import to_dict
    found = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        elif isinstance(value, str) and PLACEHOLDER.search(value):
            found.append(f"{prefix}={value}")
    walk("", to_dict(cfg))
    return found


def refuse_placeholders(cfg: RunConfig) -> None:
    """A ValueError naming the first field that still holds a placeholder (and how many more)."""
    found = placeholders(cfg)
    if found:
        more = f" (and {len(found) - 1} more: nestgen validate lists them)" if len(found) > 1 else ""
        raise ValueError(f"{found[0]} is a placeholder{more}: replace it with your bucket/project "
                         "in the config or with --set (infra/README.md shows a one-line sed)")
