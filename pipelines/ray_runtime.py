"""Connecting to Ray: an address (a cluster, `ray job submit`) or a local loopback-only head."""
from __future__ import annotations

import os

_dashboard_url: str | None = None


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """ray.init once. Locally every socket binds 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0),
    the dashboard included, and at least 4 logical CPUs are declared: on a 2-core machine,
    2 train workers plus Ray Data deadlock otherwise (Ray Train cannot start its workers
    while Ray Data holds the CPUs).

    The local dashboard is not optional: it also serves Ray's state API, which Ray Train's
    placement-group cleaner polls every few seconds; without it every training run logs
    "Failed to query Ray Train Controller actor state" again and again."""
    global _dashboard_url
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        ctx = ray.init(num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=True,
                       dashboard_host="127.0.0.1", log_to_driver=True)
    _dashboard_url = f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None
    return ray


def dashboard_url() -> str | None:
    """The Ray dashboard of the cluster init_ray connected to (None before, or without one)."""
    return _dashboard_url
