"""The replica's resident memory, for /v1/health: a replica that a request made grow shows."""
from __future__ import annotations

import os
import resource


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
