"""docs/security.md says only what the code does: every promise names code and a test that
exist, and the limits table carries the numbers of the configs it names."""
import ast
import re
from pathlib import Path

import yaml

from pipelines.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "security.md").read_text()


def _table(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table under `heading` (header and rule left out)."""
    part = DOC[DOC.index(heading):]
    lines = [ln for ln in part.splitlines() if ln.startswith("|")]
    start = part.splitlines().index(lines[0])
    rows = []
    for ln in part.splitlines()[start:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows[2:]


def _functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}


def test_every_promise_names_code_and_a_test_that_exist():
    rows = _table("### Promises, the code that keeps each")
    assert len(rows) >= 15
    for promise, code, tests in rows:
        files = re.findall(r"`([\w./-]+\.(?:py|yaml))`", code)
        named = re.findall(r"`(tests/[\w./-]+\.py)::(\w+)`", tests)
        assert files and named, f"promise without code or test: {promise[:60]}"
        for f in files:
            assert (ROOT / f).is_file(), f
        for f, test in named:
            assert test in _functions(ROOT / f), f"{f}::{test} does not exist"


def _serve_args(data: dict) -> tuple[dict, dict]:
    app = data["applications"][0]
    return data["http_options"], app["args"]


def test_the_limits_table_matches_the_configs():
    rayservice = next(d for d in yaml.safe_load_all((ROOT / "infra" / "rayservice.yaml").read_text())
                      if d and d.get("kind") == "RayService")
    sources = [
        ({}, {f: getattr(ServeConfig(), f) for f in ("max_body_bytes", "max_samples_per_request", "max_steps",
                                                      "max_queued_requests", "decode_deadline_s")}),
        _serve_args(yaml.safe_load((ROOT / "configs" / "serve_digits.yaml").read_text())),
        _serve_args(yaml.safe_load((ROOT / "configs" / "serve_digits_cluster.yaml").read_text())),
        _serve_args(yaml.safe_load(rayservice["spec"]["serveConfigV2"])),
    ]
    rows = _table("### Limits of the HTTP API")
    seen = set()
    for row in rows:
        field = re.match(r"`(\w+)`", row[0]).group(1)
        seen.add(field)
        for cell, (http, args) in zip(row[1:5], sources):
            actual = http.get(field) if field == "request_timeout_s" else args.get(field)
            if cell == "none":
                assert actual is None, (field, cell, actual)
            else:
                assert actual is not None and float(cell) == float(actual), (field, cell, actual)
    assert seen == {"max_body_bytes", "max_samples_per_request", "max_steps", "max_queued_requests",
                    "decode_deadline_s", "request_timeout_s"}
