"""The import rule: nestgen/ is the library and never imports the orchestration side (Ray,
the pipelines package, MLflow); pipelines/ imports nestgen, not the other way round."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("ray", "pipelines", "mlflow")

# Imports every nestgen module in turn and reports which forbidden top-level packages each
# one brought into sys.modules (attributed to the first module that imported them).
PROBE = """
import importlib, json, pkgutil, sys
import nestgen
forbidden = %r
seen, report = set(), {}
names = [m.name for m in pkgutil.walk_packages(nestgen.__path__, "nestgen.")]
for name in names:
    importlib.import_module(name)
    now = {m.split(".")[0] for m in sys.modules} & set(forbidden)
    if now - seen:
        report[name] = sorted(now - seen)
        seen |= now
print(json.dumps({"modules": names, "forbidden": report}))
"""


def test_the_library_imports_neither_ray_nor_pipelines_nor_mlflow():
    res = subprocess.run([sys.executable, "-c", PROBE % (FORBIDDEN,)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "nestgen.model.nested_transformer" in out["modules"] and "nestgen.serving.engine" in out["modules"]
    assert out["forbidden"] == {}, f"library modules that import the orchestration side: {out['forbidden']}"


def test_no_library_function_imports_them_when_called():
    """Imports inside functions escape the probe above (nothing calls them): read the source."""
    statement = re.compile(r"^\s*(?:from|import)\s+(?:%s)\b.*$" % "|".join(FORBIDDEN), re.M)
    hits = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}"
            for p in sorted((ROOT / "nestgen").rglob("*.py")) for m in statement.finditer(p.read_text())]
    assert hits == []


def test_no_test_imports_a_benchmark():
    """Speed is measured in benchmarks/, never asserted in tests: code a test needs lives in the
    library or beside the tests (tests/hostile_files.py), not in a benchmark."""
    statement = re.compile(r"^\s*(?:from|import)\s+benchmarks\b.*$", re.M)
    hits = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}"
            for p in sorted((ROOT / "tests").glob("*.py")) for m in statement.finditer(p.read_text())]
    assert hits == []
