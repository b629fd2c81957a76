"""The configuration reference (docs/configuration.md) cannot drift from the schema."""
import dataclasses
from pathlib import Path

from pipelines.config import RunConfig
from pipelines.config_reference import reference_block, reference_markdown

DOC = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()


def test_the_reference_is_generated_from_the_schema():
    assert reference_block(DOC) == reference_markdown(), \
        "docs/configuration.md's reference is stale: run python -m pipelines.config_reference"


def test_reference_lists_every_section_and_field():
    """Each section is in the document's summary table, and the generated reference names
    every field of every (nested) section."""
    block = reference_block(DOC)

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
        assert f"| `{section}` |" in DOC, f"section {section} missing from docs/configuration.md's section table"
    for path, name in fields:
        title = f"**`{path}`**" if path else "**top level**"
        table = block.split(title, 1)[1].split("\n\n**", 1)[0]
        assert f"| `{name}` |" in table, f"{path}.{name} missing from docs/configuration.md's reference"
