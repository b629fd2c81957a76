"""The README's configuration reference cannot drift from the schema."""
import dataclasses
from pathlib import Path

from pipelines.config import RunConfig
from pipelines.config_reference import readme_block, reference_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_reference_is_generated_from_the_schema():
    assert readme_block(README) == reference_markdown(), \
        "README.md's configuration reference is stale: run python -m pipelines.config_reference"


def test_reference_lists_every_section_and_field():
    """Each section is in the README's summary table, and the generated reference names
    every field of every (nested) section."""
    block = readme_block(README)

    def walk(cls, path):
        for f in dataclasses.fields(cls):
            sub = f.default_factory
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                yield from walk(sub, f"{path}.{f.name}" if path else f.name)
            else:
                yield path, f.name

    fields = list(walk(RunConfig, ""))
    assert len(fields) > 100
    for section in {p.split(".")[0] for p, _ in fields if p}:
        assert f"| `{section}` |" in README, f"section {section} missing from the README's section table"
    for path, name in fields:
        title = f"**`{path}`**" if path else "**top level**"
        table = block.split(title, 1)[1].split("\n\n**", 1)[0]
        assert f"| `{name}` |" in table, f"{path}.{name} missing from the README reference"
