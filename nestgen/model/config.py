"""The model's config section: the nested bidirectional transformer over a token grid."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from nestgen.configschema import check


@dataclass
class ModelConfig:
    """The nested bidirectional transformer over a token grid."""
    vocab_size: int = 17            # codebook size; the [MASK] id is vocab_size
    grid: list[int] = field(default_factory=lambda: [8, 8])   # [H, W] images, [T, H, W] video
    num_classes: int = 10           # class id num_classes is the null class (guidance)
    width: int = 256                # D of the full model
    depth: int = 4
    heads: int = 8                  # head dim = width / heads, the same in every nested size
    mlp_ratio: int = 4
    nest_factors: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    attention_width: Literal["nested", "full"] = "nested"   # full: attention at D (all heads), MLP sliced
    output_head: Literal["tied", "separate"] = "tied"

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def is_video(self) -> bool:
        """A [T, H, W] grid: the model generates clips, not images."""
        return len(self.grid) == 3

    def validate(self) -> None:
        check(self.vocab_size >= 2, "vocab_size", f"must be >= 2, got {self.vocab_size}")
        check(len(self.grid) in (2, 3), "grid", f"must be [H, W] or [T, H, W], got {self.grid}")
        check(all(g >= 1 for g in self.grid), "grid", f"sizes must be >= 1, got {self.grid}")
        check(self.num_classes >= 0, "num_classes", "must be >= 0")
        check(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        check(self.heads >= 1, "heads", f"must be >= 1, got {self.heads}")
        check(self.width >= 1 and self.width % self.heads == 0, "width",
              f"must be a positive multiple of heads={self.heads}, got {self.width}")
        check(self.mlp_ratio >= 1, "mlp_ratio", f"must be >= 1, got {self.mlp_ratio}")
        nf = self.nest_factors
        check(len(nf) >= 1 and len(set(nf)) == len(nf), "nest_factors", f"must be distinct, got {nf}")
        check(1 in nf, "nest_factors", f"must include 1 (the full model), got {nf}")
        for f in nf:
            check(f >= 1 and self.heads % f == 0, "nest_factors",
                  f"factor {f} must divide heads={self.heads} (head dim stays fixed)")
