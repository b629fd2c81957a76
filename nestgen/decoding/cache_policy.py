"""KV-cache refresh policies for cached decoding (docs/method.md, "KV cache rule").

- `none`: no cache; every step is a full pass over all tokens (the MaskGIT baseline).
- `on_switch` (alias `never_within_size`): full pass at step 0 and whenever the schedule
  switches nested size (K/V widths differ); every other step runs only the active tokens.
- `every:r`: as on_switch, and also a full pass every r steps within a size
  (`every:1` refreshes every step, i.e. the arithmetic of uncached decoding).
- suffix `+cls` (e.g. `on_switch+cls`, `every:2+cls`): cached steps also run the class
  token and the conditioning tokens as queries, so their K/V are recomputed every step
  instead of staying as they were at the segment's last full pass. They are the tokens
  every other token attends to, and they cost 1 + n_cond queries per step.
"""
from __future__ import annotations

from dataclasses import dataclass

_CONTEXT_SUFFIX = "+cls"


@dataclass(frozen=True)
class CachePolicy:
    enabled: bool
    every: int = 0          # 0: never within a size
    fresh_context: bool = False   # class + conditioning tokens are queries at cached steps

    def __str__(self) -> str:
        if not self.enabled:
            return "none"
        base = f"every:{self.every}" if self.every else "on_switch"
        return base + (_CONTEXT_SUFFIX if self.fresh_context else "")

    def refresh_steps(self, factors: list[int]) -> list[bool]:
        """For each step (given its nest factor), whether it runs a full pass."""
        out, since = [], 0
        for t, f in enumerate(factors):
            full = (not self.enabled or t == 0 or f != factors[t - 1]
                    or (self.every > 0 and since >= self.every))
            since = 1 if full else since + 1
            out.append(full)
        return out


def parse_cache_policy(text: str) -> CachePolicy:
    t = (text or "").strip()
    if t in ("none", "off", "false"):
        return CachePolicy(False)
    fresh = t.endswith(_CONTEXT_SUFFIX)
    if fresh:
        t = t[: -len(_CONTEXT_SUFFIX)]
    if t in ("on_switch", "never_within_size"):
        return CachePolicy(True, 0, fresh)
    if t.startswith("every:"):
        r = t.split(":", 1)[1]
        if r.isascii() and r.isdigit() and int(r) >= 1:
            return CachePolicy(True, int(r), fresh)
    raise ValueError(f"unknown cache policy {text!r}: expected none, on_switch, "
                     "never_within_size or every:R with R >= 1, the last three optionally "
                     "with the suffix +cls")
