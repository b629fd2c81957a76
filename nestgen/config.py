"""The library's config: what a checkpoint needs (the model, how it was trained and on what
data, how it decodes, its tokenizer, the seed), composed here and loaded from YAML strictly.

Each section lives next to the code that owns it (ModelConfig in nestgen.model.config,
DecodeConfig in nestgen.decoding.config, ...); `NestgenConfig` puts them together and checks
what spans sections. Every field has a default that runs the embedded digits example on a
laptop CPU. `load_config(path, overrides)` is the single entry point; `ConfigError` names the
bad field. The sections of what runs a checkpoint (evaluation: nestgen.evaluation.config,
serving: nestgen.serving.config) are passed to those parts on their own; the run config
(pipelines.config.RunConfig) composes them all and loads through the same functions (`schema=`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from nestgen.configschema import (ConfigError, apply_overrides, check, flatten, from_dict, read_yaml_mapping,
                                  to_dict)
from nestgen.data.config import DataConfig
from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.schedule import resolve_schedule
from nestgen.model.config import ModelConfig
from nestgen.tokenizers.config import TokenizerConfig
from nestgen.training.config import DistillConfig, TrainConfig

__all__ = [
    "ConfigError", "ModelConfig", "TrainConfig", "DistillConfig", "DecodeConfig", "DataConfig",
    "TokenizerConfig", "NestgenConfig",
    "load_config", "config_from_dict", "config_to_dict", "library_sections", "flatten",
]


@dataclass
class NestgenConfig:
    name: str = "digits"
    # The tokenizer, shared by every training seed of a pipeline run, has its own tokenizer.seed.
    seed: int = 0                    # pins training: init, masking, class dropout, data order and shards
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def validate(self) -> None:
        try:
            resolve_schedule(self.decode.schedule, self.model.nest_factors, self.decode.steps)
        except ValueError as e:
            raise ConfigError(f"decode.schedule: {e}") from None
        check(self.train.cond_tokens < self.model.num_tokens, "train.cond_tokens",
              f"must be < the grid's {self.model.num_tokens} tokens")


C = TypeVar("C", bound=NestgenConfig)


def config_from_dict(data: dict | None, overrides: list[str] | None = None, schema: type[C] = NestgenConfig) -> C:
    """`overrides` are 'a.b=value' strings; value is parsed as YAML (so 3, 1e-3, [1,2] work).
    `schema` is NestgenConfig or a dataclass extending it with more sections."""
    return from_dict(schema, apply_overrides(data or {}, overrides))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                schema: type[C] = NestgenConfig) -> C:
    return config_from_dict(read_yaml_mapping(path) if path is not None else {}, overrides, schema)


def config_to_dict(cfg: NestgenConfig) -> dict:
    return to_dict(cfg)


def library_sections(data: dict) -> dict:
    """The library's own sections of a config dict. A checkpoint written by a pipeline run
    also holds that run's other sections (evaluate, serve and the orchestration ones), which a
    checkpoint does not need; everything the library does know is still checked strictly."""
    names = {f.name for f in dataclasses.fields(NestgenConfig)}
    out = {k: v for k, v in data.items() if k in names}
    if "seed" in out.get("train", {}):
        # checkpoints from before the seed moved to the top level hold it as train.seed
        out["train"] = {k: v for k, v in out["train"].items() if k != "seed"}
        out.setdefault("seed", data["train"]["seed"])
    return out
