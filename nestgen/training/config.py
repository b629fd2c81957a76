"""The training config section: optimisation, the nested objective and distillation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nestgen.configschema import check
from nestgen.decoding.schedule import PRESETS
from nestgen.device import check_device


@dataclass
class DistillConfig:
    schedule: Literal["linear", "fixed", "off"] = "linear"   # lambda: 1->0 | value | 1 (no KD)
    value: float = 0.5                                       # lambda when schedule == fixed

    def validate(self) -> None:
        check(0.0 <= self.value <= 1.0, "value", f"must be in [0, 1], got {self.value}")


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.96])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05       # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    class_dropout: float = 0.1       # share of labels replaced by the null class
    distill: DistillConfig = field(default_factory=DistillConfig)
    sizes_per_step: str = "all"      # "all" or "sample:k" (k smaller sizes; full always runs)
    # Decode-aware weighting (nestgen.training.decode_aware): 0 trains every size on the cosine
    # masks alike; up to 1 moves each smaller size's loss onto the mask ratios at which
    # decode.schedule and decode_aware_schedules run it (1: all of it). The schedules are part
    # of the training recipe, so a checkpoint's config says what its weights were trained for.
    decode_aware: float = 0.0
    decode_aware_schedules: list[str] = field(default_factory=lambda: list(PRESETS))  # besides decode.schedule; presets or strings like 8x3,1x9
    grad_accum: int = 1
    ema_decay: float = 0.0           # 0 disables the EMA of weights
    cond_tokens: int = 0             # leading grid tokens that are never masked (frame prediction)
    log_every: int = 50
    device: str = "auto"             # auto | cpu | cuda
    precision: Literal["fp32", "bf16"] = "fp32"   # bf16 = autocast on CUDA
    # Speed / memory levers (benchmarks/train.py measures each); none changes the loss.
    loss_chunk: int = 0              # > 0: head + CE over this many masked tokens at a time
    activation_checkpointing: bool = False   # recompute block activations in backward
    compile: bool = False            # torch.compile each transformer block

    def num_sampled_sizes(self) -> int | None:
        """None for all sizes, else k from 'sample:k'."""
        if self.sizes_per_step == "all":
            return None
        return int(self.sizes_per_step.split(":", 1)[1])

    def validate(self) -> None:
        check(self.steps >= 1, "steps", f"must be >= 1, got {self.steps}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
              f"must be two numbers in [0, 1), got {self.betas}")
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 disables)")
        check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        check(0 <= self.class_dropout <= 1, "class_dropout", "must be in [0, 1]")
        ok = self.sizes_per_step == "all"
        if self.sizes_per_step.startswith("sample:"):
            k = self.sizes_per_step.split(":", 1)[1]
            ok = k.isdigit() and int(k) >= 1
        check(ok, "sizes_per_step", f"must be 'all' or 'sample:k' with k >= 1, got {self.sizes_per_step!r}")
        check(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        check(0 <= self.decode_aware <= 1, "decode_aware", f"must be in [0, 1], got {self.decode_aware}")
        check(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        check(self.cond_tokens >= 0, "cond_tokens", "must be >= 0")
        check(self.log_every >= 1, "log_every", "must be >= 1")
        check(self.loss_chunk >= 0, "loss_chunk", "must be >= 0 (0: whole batch at once)")
        check_device(self.device)
