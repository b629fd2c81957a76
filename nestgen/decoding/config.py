"""The decode config section: MaskGIT decoding with a decode-time model schedule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nestgen.configschema import ConfigError, check
from nestgen.decoding.cache_policy import parse_cache_policy


@dataclass
class DecodeConfig:
    """MaskGIT decoding with a decode-time model schedule (see nestgen.decoding.schedule)."""
    schedule: str = "magnets"        # preset name or compact string, e.g. "8x3,4x3,2x3,1x3"
    steps: int = 12                  # K; the schedule must add up to it
    cache: str = "on_switch"         # none | on_switch | never_within_size | every:r, optionally +cls
                                     # (images, frame prediction; class-conditional video configs: every:2)
    temperature: float = 1.0         # token sampling temperature
    temperature_schedule: Literal["constant", "linear"] = "constant"
    choice_temperature: float = 4.5  # Gumbel noise on confidences x (1 - (t+1)/K) at step t
    guidance_scale: float = 0.0      # logits = (1+g) cond - g uncond; 0 skips the uncond pass
    guidance_schedule: Literal["constant", "linear", "cosine"] = "constant"

    def validate(self) -> None:
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(self.choice_temperature >= 0, "choice_temperature", "must be >= 0")
        check(self.guidance_scale >= 0, "guidance_scale", "must be >= 0")
        check_cache_policies([self.cache], "cache")


def check_cache_policies(caches: list[str], field: str) -> None:
    """ConfigError naming `field` unless every entry parses as a cache policy."""
    check(len(caches) >= 1, field, "must not be empty")
    for c in caches:
        try:
            parse_cache_policy(c)
        except ValueError as e:
            raise ConfigError(f"{field}: {e}") from None
