"""FSDP2 sharding of the nested objective (nestgen.training.sharding) on two CPU processes
over gloo: what each rank keeps, what a nested size's forward gathers, the sub-model slices
as views of the gathered weights, and the full state a checkpoint holds, EMA of weights included."""
import dataclasses
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
FACTORS = (1, 2, 4, 8)
DECAY = 0.9


def _cfg():
    from nestgen.config import config_from_dict
    return config_from_dict({
        "model": {"vocab_size": 32, "grid": [4, 4], "num_classes": 10, "width": 64, "depth": 2, "heads": 8,
                  "nest_factors": list(FACTORS)},
        "train": {"steps": 10, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "device": "cpu",
                  "ema_decay": DECAY}})


def _worker(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        _check(rank)
        # both ranks done with every collective before the group goes: a rank that tears it
        # down while the other still uses it can abort in gloo's threads (seen once in CI)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _check(rank: int) -> None:
    import torch.nn.functional as F
    from torch.distributed.tensor import DTensor, Shard

    from nestgen.training.loop import NestedTrainer
    from nestgen.training.sharding import shard_objective
    cfg = _cfg()
    cpu = torch.device("cpu")
    trainer = NestedTrainer(cfg, device=cpu, wrap=shard_objective, rank=rank)
    plain = NestedTrainer(cfg, device=cpu)                   # the same initial weights, unsharded
    full = dict(plain.core.named_parameters())

    # Each rank keeps its dim-0 slice of every parameter (and the optimizer only sees those).
    assert trainer.sharded
    for name, p in trainer.core.named_parameters():
        assert isinstance(p, DTensor) and p.placements == (Shard(0),), name
        assert torch.equal(p.to_local(), full[name].detach().chunk(WORLD)[rank]), name

    # A block's forward, for every nested size, sees its whole parameters gathered (full shapes),
    # and every matmul of the sub-model reads a slice that is a view of one of them.
    calls, linear_weights = [], []      # per forward of block 0: its parameters, index of its first matmul
    block = trainer.core.blocks[0]
    block.register_forward_pre_hook(lambda m, args: calls.append((
        {n: (tuple(p.shape), p.untyped_storage().data_ptr()) for n, p in m.named_parameters()
         if not isinstance(p, DTensor)},                              # gathered: plain tensors
        len(linear_weights))))
    real_linear = F.linear
    F.linear = lambda x, w, b=None: linear_weights.append((tuple(w.shape), w.untyped_storage().data_ptr())) \
        or real_linear(x, w, b)
    try:
        tokens = torch.randint(0, 32, (4, 16))
        labels = torch.randint(0, 10, (4,))
        d = cfg.model.width
        for f in FACTORS:
            with torch.no_grad():
                trainer.objective(tokens, labels, 0, sorted({1, f}))     # the full size always runs
            gathered, first = calls[-1]
            assert {n: s for n, (s, _) in gathered.items()} == \
                {n: tuple(p.shape) for n, p in plain.core.blocks[0].named_parameters()}, f
            w = d // f
            block_linears = linear_weights[first:first + 4]          # qkv, o, fc1, fc2
            assert [s for s, _ in block_linears] == [(3 * w, w), (w, w), (4 * w, w), (w, 4 * w)], f
            ptrs = [gathered[n][1] for n in ("attn.qkv.weight", "attn.o.weight", "mlp.fc1.weight", "mlp.fc2.weight")]
            assert len(set(ptrs)) == 4 and [ptr for _, ptr in block_linears] == ptrs, f
    finally:
        F.linear = real_linear

    # Training, then the gathered state: rank 0 gets the unsharded format, resumable by a
    # fresh sharded trainer and by an unsharded one. The reference EMA: the unsharded
    # weights after every step, averaged in one process (starting at the initial weights,
    # with the EMA's warm-up: decay min(DECAY, (1 + t) / (10 + t)) at step t).
    gen = torch.Generator().manual_seed(rank)
    reference = {k: v.detach().double() for k, v in full.items()}
    for t in range(3):
        trainer.train_step(torch.randint(0, 32, (8, 16), generator=gen), torch.randint(0, 10, (8,), generator=gen))
        weights = trainer.model_state()
        d = min(DECAY, (1 + t) / (10 + t))
        reference = {k: d * reference[k] + (1 - d) * weights[k].double() for k in weights}
    ckpt = {"model": trainer.model_state(), **trainer.state()}
    copy = trainer.eval_model()
    box = [ckpt]
    dist.broadcast_object_list(box, src=0)                   # as if every rank read the file
    if rank == 0:
        assert {k: v.shape for k, v in ckpt["model"].items()} == {k: v.shape for k, v in full.items()}
        assert sorted(ckpt["optimizer"]["state"]) == list(range(len(full)))
        assert ckpt["ema"].keys() == full.keys()
        for k, v in ckpt["ema"].items():
            assert v.dtype == torch.float32 and torch.allclose(v.double(), reference[k], rtol=1e-6, atol=1e-7), k
        assert not torch.equal(ckpt["ema"]["blocks.0.attn.qkv.weight"], ckpt["model"]["blocks.0.attn.qkv.weight"])
        plain.load_state(ckpt)
        assert all(torch.equal(plain.ema.state_dict()[k], v) for k, v in ckpt["ema"].items())
        assert all(torch.equal(copy.state_dict()[k], v) for k, v in ckpt["ema"].items())    # samples from the EMA
    else:
        assert ckpt["model"] == {} and ckpt["optimizer"] == {} and ckpt["ema"] == {} and copy is None
    resumed = NestedTrainer(cfg, device=cpu, wrap=shard_objective, rank=rank)
    resumed.load_state(box[0])
    assert resumed.step == 3
    for (name, p), q in zip(trainer.core.named_parameters(), resumed.core.parameters()):
        assert torch.equal(p.to_local(), q.to_local()), name
        assert torch.equal(trainer.opt.state[p]["exp_avg"].to_local(), resumed.opt.state[q]["exp_avg"].to_local()), name
        assert torch.equal(trainer.ema.avg[name], resumed.ema.avg[name]), name     # this rank's slice of the EMA

    # Without an EMA, a sharded trainer samples from a gathered copy of its live weights.
    live = NestedTrainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ema_decay=0)), device=cpu,
                         wrap=shard_objective, rank=rank)
    live.load_state(box[0])
    copy = live.eval_model()
    if rank == 0:       # (loading the state turned ckpt's tensors into this rank's DTensors; plain holds it)
        assert all(torch.equal(copy.state_dict()[k], v) for k, v in plain.core.state_dict().items())
    else:
        assert copy is None


def test_sharded_objective_gathers_whole_blocks_slices_views_and_saves_full_state():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port,), nprocs=WORLD)
