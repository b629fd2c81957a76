"""The data config section: where training tokens come from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nestgen.configschema import check


@dataclass
class DataConfig:
    """Where training tokens come from: `digits` = scikit-learn digits as an 8x8 grid with
    vocab 17 (no tokenizer); `shards` = Parquet token shards written by `nestgen tokenize`."""
    source: Literal["digits", "shards"] = "digits"
    url: str = ""                    # shard folder (holding manifest.json) when source == shards
    holdout_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        check(0 <= self.holdout_fraction < 1, "holdout_fraction", "must be in [0, 1)")
        check(self.source != "shards" or bool(self.url), "url", "is required when source is 'shards'")
