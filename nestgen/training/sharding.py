"""Fully sharded data parallelism (FSDP2, torch.distributed.fsdp.fully_shard) of the nested
objective, and the full (unsharded) state a checkpoint holds.

Every transformer block is one FSDP unit; the rest (embeddings, final norm, head) is the
root's unit. Each rank keeps a 1/world slice (dim 0) of every parameter, gradient and AdamW moment.
A unit's forward all-gathers its full parameters, so a nested sub-model of width D/f still
slices the first D/f channels out of full (gathered) weights, as a view. FSDP gathers a
whole unit whatever the width (a sub-model's channels lie on every rank: the embeddings are
sliced along dim 1): each block once per nested size in forward and again in backward, the
root once per step (docs/architecture.md, "Sharded training (FSDP)").

Checkpoints stay in the single-process format (what `torch.nn.Module.state_dict` and
`torch.optim.Optimizer.state_dict` give), so evaluation, serving and a DDP run read them.
Gathering and scattering that state are collectives: every rank calls these functions.
"""
from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from nestgen.training.objective import NestedObjective

# The full state, gathered to rank 0's CPU memory (the other ranks get {}).
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Every rank holds the full state (read from the checkpoint) and keeps its own slices.
_SCATTER = StateDictOptions(full_state_dict=True)


def shard_objective(objective: NestedObjective) -> NestedObjective:
    """Shards `objective` (already on this rank's device) in place over the default process group."""
    for block in objective.model.blocks:
        fully_shard(block)
    fully_shard(objective)
    return objective


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_model_state(model: torch.nn.Module) -> dict:
    """model.state_dict() of the unsharded model, on rank 0 ({} on the others)."""
    return get_model_state_dict(model, options=_GATHER)


def full_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """opt.state_dict() as the unsharded model's optimizer would give it (parameters
    numbered in param-group order), on rank 0 ({} on the others)."""
    state = get_optimizer_state_dict(model, opt, options=_GATHER)
    if not state:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, opt))}
    return {"state": {index[name]: s for name, s in state["state"].items()},
            "param_groups": [{**g, "params": [index[name] for name in g["params"]]}
                             for g in state["param_groups"]]}


def load_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict) -> None:
    """Inverse of full_model_state / full_optimizer_state: each rank keeps its slices."""
    names = _param_names(model, opt)
    set_model_state_dict(model, model_state, options=_SCATTER)
    set_optimizer_state_dict(model, opt, {
        "state": {names[i]: s for i, s in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                         for g in optimizer_state["param_groups"]]}, options=_SCATTER)


def gather_full(params: dict[str, DTensor], local: dict[str, torch.Tensor]) -> dict:
    """{name: the full tensor} of tensors sharded as `params` (of which `local` holds this
    rank's slices, e.g. an average of them), on rank 0's CPU ({} on the others)."""
    rank0 = torch.distributed.get_rank() == 0
    state = {}
    for name, p in params.items():
        full = DTensor.from_local(local[name], p.device_mesh, p.placements, run_check=False,
                                  shape=p.shape, stride=p.stride()).full_tensor()
        if rank0:
            state[name] = full.cpu()
    return state


def local_slice(param: DTensor, full: torch.Tensor) -> torch.Tensor:
    """This rank's slice of `full` as `param` is sharded (every rank holds `full`: no communication)."""
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements,
                             src_data_rank=None).to_local()


def _param_names(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in the order opt.state_dict() numbers them."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in opt.param_groups for p in group["params"]]
