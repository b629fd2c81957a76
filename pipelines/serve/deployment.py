"""ServeConfig -> Ray Serve deployment options, the application's typed arguments, and the
config files `nestgen serve` reads.

Plain dicts, pydantic and YAML only (no Ray import), so they are checked without starting Serve.
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, create_model

from nestgen.config import config_from_dict
from nestgen.configschema import ConfigError, apply_overrides, from_dict, read_yaml_mapping, to_dict
from pipelines.config import RunConfig, ServeConfig

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def deployment_options(cfg: ServeConfig) -> dict:
    """Options for `Generator.options(...)`: concurrency, queue cap, replicas (fixed or
    autoscaled on ongoing requests per replica) and each replica's CPUs/GPUs."""
    opts: dict = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
        # Serve probes check_health this often; a decode past its deadline fails the probe.
        "health_check_period_s": min(10.0, cfg.decode_deadline_s / 2),
    }
    if cfg.max_replicas > cfg.num_replicas:
        # A replica is busy, not overloaded, while it holds about one batch (or running set) of requests.
        rows = cfg.max_active_rows if cfg.batching == "step" else cfg.max_batch_size
        opts["autoscaling_config"] = {"min_replicas": cfg.num_replicas, "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": rows}
    else:
        opts["num_replicas"] = cfg.num_replicas
    return opts


def serve_config_from_args(args: dict | None) -> ServeConfig:
    """The `args:` of a Serve application (the fields of ServeConfig), strictly."""
    return from_dict(ServeConfig, dict(args or {}), "serve")


def _args_model() -> type[BaseModel]:
    """ServeConfig's fields as a pydantic model, made from the dataclass so the two never
    disagree. Ray Serve validates an application builder's arguments with the model its
    parameter is annotated with, which converts `serve run ... max_batch_size=16` (strings)
    to the fields' types; ServeConfig.validate still checks the values."""
    hints = typing.get_type_hints(ServeConfig)
    fields = {f.name: (hints[f.name], f.default if f.default is not dataclasses.MISSING
                       else Field(default_factory=f.default_factory))
              for f in dataclasses.fields(ServeConfig)}
    return create_model("ServeArgs", __config__=ConfigDict(extra="forbid"), __doc__=ServeConfig.__doc__, **fields)


ServeArgs = _args_model()


def _override(args: dict, overrides: list[str]) -> dict:
    """Overrides name serve fields with or without the `serve.` prefix."""
    prefixed = [o if o.strip().startswith("serve.") else f"serve.{o.strip()}" for o in overrides]
    return apply_overrides({"serve": args}, prefixed)["serve"]


def read_serve_file(path: str | Path, overrides: list[str] | None = None,
                    schema: type[RunConfig] = RunConfig) -> tuple[ServeConfig, str, int]:
    """(ServeConfig, host, port) from either a Serve config file (the one `serve deploy` takes:
    the first application's args, and http_options) or a nestgen config of type `schema`,
    checked whole (its `serve:` section; 127.0.0.1:8000). `overrides` are key=value on the
    serve fields."""
    data = read_yaml_mapping(path)
    if "applications" in data:
        apps = data["applications"] or []
        if not apps:
            raise ConfigError(f"{path}: applications is empty")
        http = data.get("http_options") or {}
        args = apps[0].get("args") or {}
        return serve_config_from_args(_override(args, overrides or [])), \
            http.get("host", DEFAULT_HOST), int(http.get("port", DEFAULT_PORT))
    cfg = config_from_dict(data, schema=schema)
    return serve_config_from_args(_override(to_dict(cfg.serve), overrides or [])), DEFAULT_HOST, DEFAULT_PORT
