"""Connecting to Ray: an address (a cluster, `ray job submit`) or a local loopback-only head."""
from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """ray.init once. Locally every socket binds 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
    and at least 4 logical CPUs are declared: on a 2-core machine, 2 train workers plus Ray Data
    deadlock otherwise (Ray Train cannot start its workers while Ray Data holds the CPUs)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
                 log_to_driver=True)
    return ray
