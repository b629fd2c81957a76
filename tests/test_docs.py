"""Documentation and comments point only at things a clone of the repository has."""
import argparse
import ast
import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Notes that used to live beside the repository; their content is docs/method.md now.
GONE = ("METHOD" + ".md", "STACK" + "-NOTES")
RELATIVE_PATH = re.compile(r"(?:\.\./)+[\w./-]*\w")
MD_LINK = re.compile(r"\]\(([^)\s#]+)")


def _tracked_text_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout and git to list the tracked files")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    out = []
    for name in filter(None, names):
        path = ROOT / name
        if path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            out.append(path)
    return out


def _prose(path: Path, text: str) -> str:
    """The part of a file written for readers: all of a Markdown file, a Python file's
    docstrings and comments, the `#` comments of anything else (code may hold paths on
    purpose, e.g. a path-traversal attempt that a test or benchmark sends)."""
    if path.suffix == ".md":
        return text
    if path.suffix == ".py":
        tree = ast.parse(text)
        docs = [ast.get_docstring(n) or "" for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        comments = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline)
                    if t.type == tokenize.COMMENT]
        return "\n".join(docs + comments)
    return "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)


def _inside_repo(base: Path, target: str) -> bool:
    resolved = (base / target).resolve()
    return resolved.is_relative_to(ROOT) and resolved.exists()


def test_no_file_points_outside_the_repository():
    problems = []
    for path in _tracked_text_files():
        text = path.read_text(errors="replace")
        rel = path.relative_to(ROOT)
        for name in GONE:
            if name in text:
                problems.append(f"{rel}: mentions {name}")
        targets = RELATIVE_PATH.findall(_prose(path, text))
        if path.suffix == ".md":
            targets += [t for t in MD_LINK.findall(text) if "://" not in t and not t.startswith("mailto:")]
        problems += [f"{rel}: {t} is not a file in the repository"
                     for t in targets if not _inside_repo(path.parent, t)]
    assert not problems, "\n".join(problems)


def test_readme_links_every_document_in_docs():
    readme = (ROOT / "README.md").read_text()
    docs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert docs, "docs/ holds no documents"
    assert [d for d in docs if f"]({d})" not in readme] == []


def _documented_commands() -> list[tuple[str, list[str]]]:
    """(file, words) of every command in the code blocks of README.md and docs/*.md (bash
    blocks, and untagged ones such as command summaries): continuations joined, comments
    dropped, `cmd1 && cmd2` and `a | b` split into commands."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for lang, block in re.findall(r"```(\w*)\n(.*?)```", path.read_text(), re.S):
            if lang not in ("bash", ""):
                continue
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].split(" # ")[0].strip()
                for part in re.split(r"\s(?:&&|\|\||\|)\s", line):
                    if part and not part.startswith("#"):
                        # untagged blocks also hold diagrams, whose prose shlex cannot split
                        out.append((path.relative_to(ROOT).as_posix(), shlex.split(part) if lang else part.split()))
    return out


def test_every_documented_command_names_what_exists():
    """The docs' commands run what the repository has: every `nestgen` subcommand is one the
    command line registers, every `python -m` module imports from here, every `make` target
    and `bash` script exists."""
    from pipelines.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    commands = _documented_commands()
    assert len(commands) > 30
    problems = []
    for doc, words in commands:
        tool = words[0].rsplit("/", 1)[-1]
        if tool == "nestgen" and words[1] not in sub.choices:
            problems.append(f"{doc}: nestgen has no subcommand {words[1]!r}")
        if tool.startswith("python") and words[1:2] == ["-m"] and importlib.util.find_spec(words[2]) is None:
            problems.append(f"{doc}: python -m {words[2]}: no such module")
        if tool == "make" and not {w for w in words[1:] if "=" not in w} <= targets:
            problems.append(f"{doc}: {' '.join(words)}: no such make target")
        if tool == "bash" and not (ROOT / words[-1 if len(words) == 2 else 1]).is_file():
            problems.append(f"{doc}: {' '.join(words)}: no such script")
    assert not problems, "\n".join(problems)
