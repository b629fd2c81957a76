"""What every benchmark shares: results as JSON next to the printed table."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipelines.ray_runtime import free_port  # noqa: F401  (benchmarks take it from here, for their own Serve)


def write_json(path: str | None, result: dict) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


def loopback_ray_env() -> None:
    """Local Ray binds 127.0.0.1 only and reports no usage (set before Ray starts)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
