"""Decode-time model schedules: which nested size runs at each of the K decoding steps.

Compact form: comma-separated `FxS` items, nest factor F for S consecutive steps, e.g.
`8x3,4x3,2x3,1x3` (MaGNeTS: small models first) or `1x12` (the full-size baseline).
Presets are named schedules written for the default nest factors [1, 2, 4, 8] and K = 12.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PRESETS: dict[str, str] = {
    "baseline": "1x12",                 # MaskGIT: full model at every step
    "magnets": "8x3,4x3,2x3,1x3",       # the paper's small-to-large schedule
    "magnets-lite": "8x4,4x4,2x2,1x2",  # more small steps, fewer large ones
    "magnets-2": "2x6,1x6",             # two sizes only (for models with few nest factors)
    "large-first": "1x3,2x3,4x3,8x3",   # ablation: reverse order
}

# ASCII digits only: Python's \d also matches other scripts' digits, which int() would accept.
_ITEM = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$", re.ASCII)


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: one (factor, steps) segment per size, in decoding order."""
    segments: tuple[tuple[int, int], ...]

    @property
    def steps(self) -> int:
        return sum(s for _, s in self.segments)

    def factors(self) -> list[int]:
        """The nest factor of every step, length K."""
        return [f for f, s in self.segments for _ in range(s)]

    def __str__(self) -> str:
        return ",".join(f"{f}x{s}" for f, s in self.segments)


def parse_schedule(text: str, nest_factors: list[int] | None = None, steps: int | None = None) -> Schedule:
    """Parse `FxS,...`; with `nest_factors`/`steps`, check factors exist and steps add up."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("schedule is empty: expected e.g. '8x3,4x3,2x3,1x3' or a preset "
                         f"({', '.join(sorted(PRESETS))})")
    segments: list[tuple[int, int]] = []
    for item in text.split(","):
        m = _ITEM.match(item)
        if not m:
            raise ValueError(f"schedule item {item.strip()!r} in {text!r} is not of the form "
                             "FACTORxSTEPS (e.g. 8x3)")
        f, s = int(m.group(1)), int(m.group(2))
        if f < 1 or s < 1:
            raise ValueError(f"schedule item {item.strip()!r}: factor and steps must be >= 1")
        if nest_factors is not None and f not in nest_factors:
            raise ValueError(f"schedule {text!r} uses nest factor {f}, but the model has "
                             f"nest factors {sorted(nest_factors)}")
        if segments and segments[-1][0] == f:       # 2x3,2x3 == 2x6
            segments[-1] = (f, segments[-1][1] + s)
        else:
            segments.append((f, s))
    sched = Schedule(tuple(segments))
    if steps is not None and sched.steps != steps:
        raise ValueError(f"schedule {text!r} has {sched.steps} steps but {steps} decoding steps "
                         "were asked for")
    return sched


def resolve_schedule(name_or_text: str, nest_factors: list[int] | None = None,
                     steps: int | None = None) -> Schedule:
    """A preset name or a compact schedule string, checked against the model."""
    text = PRESETS.get(name_or_text.strip(), name_or_text) if isinstance(name_or_text, str) else name_or_text
    if isinstance(name_or_text, str) and re.fullmatch(r"[A-Za-z][\w-]*", name_or_text.strip()) \
            and name_or_text.strip() not in PRESETS:
        raise ValueError(f"unknown schedule preset {name_or_text.strip()!r}; presets: "
                         f"{', '.join(sorted(PRESETS))}")
    return parse_schedule(text, nest_factors, steps)


def presets_for(nest_factors: list[int], steps: int | None = None) -> dict[str, Schedule]:
    """The presets that a model with these nest factors can run (and, if given, with K steps)."""
    out = {}
    for name, text in PRESETS.items():
        try:
            out[name] = parse_schedule(text, nest_factors, steps)
        except ValueError:
            continue
    return out
