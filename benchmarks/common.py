"""What every benchmark shares: results as JSON next to the printed table."""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path: str | None, result: dict) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
