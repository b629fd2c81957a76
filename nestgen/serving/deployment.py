"""ServeConfig -> Ray Serve deployment options, and the config files `nestgen serve` reads.

Plain dicts and YAML only (no Ray import), so they are checked without starting Serve.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from nestgen.config import ServeConfig, config_from_dict
from nestgen.configschema import ConfigError, from_dict, to_dict

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
        # A replica is busy, not overloaded, while it holds about one batch of requests.
        opts["autoscaling_config"] = {"min_replicas": cfg.num_replicas, "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": cfg.max_batch_size}
    else:
        opts["num_replicas"] = cfg.num_replicas
    return opts


def serve_config_from_args(args: dict | None) -> ServeConfig:
    """The `args:` of a Serve application (the fields of ServeConfig), strictly."""
    return from_dict(ServeConfig, dict(args or {}), "serve")


def _override(args: dict, overrides: list[str]) -> dict:
    out = dict(args)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        out[key.strip().removeprefix("serve.")] = yaml.safe_load(raw)
    return out


def read_serve_file(path: str | Path, overrides: list[str] | None = None) -> tuple[ServeConfig, str, int]:
    """(ServeConfig, host, port) from either a Serve config file (the one `serve deploy` takes:
    the first application's args, and http_options) or a nestgen config (its `serve:` section;
    127.0.0.1:8000). `overrides` are key=value on the serve fields."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    if "applications" in data:
        apps = data["applications"] or []
        if not apps:
            raise ConfigError(f"{path}: applications is empty")
        http = data.get("http_options") or {}
        args = apps[0].get("args") or {}
        return serve_config_from_args(_override(args, overrides or [])), \
            http.get("host", DEFAULT_HOST), int(http.get("port", DEFAULT_PORT))
    cfg = config_from_dict(data)
    return serve_config_from_args(_override(to_dict(cfg.serve), overrides or [])), DEFAULT_HOST, DEFAULT_PORT
