"""Every third-party package that nestgen/ or pipelines/ imports is declared in pyproject.toml:
an install from the package's own metadata can import all of it, not only while some other
dependency happens to bring the package along."""
import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_levels() -> dict[str, str]:
    """{top-level module: a file importing it} over the installed packages' sources."""
    found: dict[str, str] = {}
    for package in ("nestgen", "pipelines"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_package_the_code_imports_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {canonicalize_name(Requirement(r).name) for r in requirements}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, where in _imported_top_levels().items():
        if module in sys.stdlib_module_names or module in ("nestgen", "pipelines"):
            continue
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists, f"{where} imports {module}, which no installed distribution provides"
        if not dists & declared:
            undeclared[module] = (sorted(dists), where)
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"
    assert "pydantic" in declared
