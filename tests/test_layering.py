"""The import rule: nestgen/ is the library and never imports the orchestration side (Ray,
the pipelines package, MLflow); pipelines/ imports nestgen, not the other way round."""
import ast
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


# What a checkpoint needs sits below what runs one: the config composed in nestgen.config and the
# parts it is made of never reach up into evaluation or serving (whose sections join the run
# config in pipelines.config).
BELOW_RUNNERS = ("nestgen/config.py", "nestgen/configschema.py", "nestgen/training", "nestgen/model",
                 "nestgen/decoding", "nestgen/data", "nestgen/tokenizers")
RUNNERS = ("nestgen.evaluation", "nestgen.serving")


def _imported(path: Path) -> list[str]:
    """Every module an `import` / `from ... import` in the file names, at any depth (functions too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _files(*where: str) -> list[Path]:
    return sorted(p for w in where for p in ([ROOT / w] if w.endswith(".py") else (ROOT / w).rglob("*.py")))


def test_the_checkpoint_config_and_its_parts_import_neither_evaluation_nor_serving():
    hits = [f"{p.relative_to(ROOT)}: {name}" for p in _files(*BELOW_RUNNERS) for name in _imported(p)
            if name in RUNNERS or name.startswith(tuple(r + "." for r in RUNNERS))]
    assert hits == []
    # and not through anything they import: a fresh interpreter that loads them all loads neither
    probe = ("import importlib, pkgutil, sys\n"
             f"for w in {[w.removesuffix('.py').replace('/', '.') for w in BELOW_RUNNERS]}:\n"
             "    m = importlib.import_module(w)\n"
             "    for sub in pkgutil.walk_packages(getattr(m, '__path__', []), w + '.'):\n"
             "        importlib.import_module(sub.name)\n"
             f"print(sorted(n for n in sys.modules if n.startswith({RUNNERS})))\n")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_no_library_module_hides_an_import_behind_type_checking():
    """`if TYPE_CHECKING:` imports are how an import cycle is dodged; the library has none."""
    hits = []
    for p in _files("nestgen"):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            test = node.test if isinstance(node, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                hits.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert hits == []


def test_only_the_serve_app_speaks_http():
    """FastAPI and Starlette are imported only by the Serve app (pipelines/serve/), and pydantic in
    the library only by the request schema, which the engine and the MLflow model validate too:
    the HTTP answers' models and middleware live beside the app, not in nestgen."""
    serve_app = ROOT / "pipelines" / "serve"
    packages = {p: {name.split(".")[0] for name in _imported(p)} for p in _files("nestgen", "pipelines")}
    http = [str(p.relative_to(ROOT)) for p, names in packages.items()
            if names & {"fastapi", "starlette"} and serve_app not in p.parents]
    assert http == [], f"modules outside pipelines/serve/ that import FastAPI or Starlette: {http}"
    schemas = [str(p.relative_to(ROOT)) for p, names in packages.items()
               if "pydantic" in names and ROOT / "nestgen" in p.parents]
    assert schemas == ["nestgen/serving/request.py"], f"library modules that import pydantic: {schemas}"
