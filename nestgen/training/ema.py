"""Exponential moving average (EMA) of a model's weights, for a plain, DDP or sharded model.

The average is kept next to each parameter's own tensor: a sharded (FSDP2) parameter is a
DTensor, and each rank averages its local slice, so an update needs no communication and
costs 1/world of the memory. Only a checkpoint gathers it (nestgen.training.sharding), into
the format of model.state_dict(), which evaluation and serving load as the model's weights.

The average starts at the initial weights and update t (t = 0, 1, ...) moves it `1 - decay_t`
of the way to the new ones, with the warm-up of TensorFlow's ExponentialMovingAverage (and
timm's ModelEma): decay_t = min(decay, (1 + t) / (10 + t)). Without it the random init keeps
weight decay^t, still ~8% after 25k steps at 0.9999; with it, prod_t decay_t (~1e-3 by then).
The step counts the trainer's optimizer steps, which a checkpoint keeps, so a checkpoint's
average resumes exactly.
"""
from __future__ import annotations

import torch


class WeightEMA:
    def __init__(self, model: torch.nn.Module, decay: float, sharded: bool = False):
        """`sharded`: the parameters of `model` are DTensors (nestgen.training.sharding)."""
        self.decay, self.sharded = decay, sharded
        self.params = dict(model.named_parameters())     # the objects the optimizer steps
        self.avg = {name: self._local(p).detach().clone() for name, p in self.params.items()}

    def _local(self, p: torch.Tensor) -> torch.Tensor:
        return p.to_local() if self.sharded else p

    def decay_at(self, t: int) -> float:
        """The decay of update t (0-based): warmed up, then the configured one."""
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, t: int) -> None:
        """Update t: the optimizer steps taken before this one."""
        torch._foreach_lerp_(list(self.avg.values()), [self._local(p) for p in self.params.values()],
                             1 - self.decay_at(t))

    def state_dict(self) -> dict:
        """The average as model.state_dict(); a sharded one is gathered (a collective: every
        rank calls it; rank 0 gets it on the CPU, the others {})."""
        if not self.sharded:
            return dict(self.avg)
        from nestgen.training.sharding import gather_full
        return gather_full(self.params, self.avg)

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """From a full state (of a sharded run or not); a sharded rank keeps its slices."""
        for name, p in self.params.items():
            full = state[name]
            if self.sharded:
                from nestgen.training.sharding import local_slice
                full = local_slice(p, full)
            self.avg[name].copy_(full)
