"""DDP vs FSDP (scaling.strategy) for nested training: per-step time and per-worker state.

  python -m benchmarks.fsdp --json benchmarks/results/fsdp_cpu.json     # 2 CPU processes, gloo

Two processes over gloo (as Ray Train's CPU workers are) each hold one trainer per strategy:
the objective under torch's DistributedDataParallel (what Ray's prepare_model wraps it in)
and under nestgen.training.sharding.shard_objective, with the same seed and data. Timed
steps alternate between the two, so the ratio holds on a busy machine. State MiB: the
parameters, gradients and AdamW moments one worker keeps between steps (its shards under
FSDP); a step's activations and FSDP's transient gathered blocks come on top.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.common import free_port, write_json

STRATEGIES = ("ddp", "fsdp")


def _cfg(args):
    from nestgen.config import config_from_dict
    return config_from_dict({
        "model": {"vocab_size": args.vocab, "grid": [args.tokens_side] * 2, "num_classes": 10,
                  "width": args.width, "depth": args.depth, "heads": args.heads},
        "train": {"steps": args.steps + args.warmup, "batch_size": args.batch_size // args.workers,
                  "warmup_steps": 1, "device": "cpu"}})


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _state_mib(trainer) -> float:
    tensors = [p for p in trainer.core.parameters()] + [p.grad for p in trainer.core.parameters() if p.grad is not None]
    tensors += [v for s in trainer.opt.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim]
    return sum(_local(t).numel() * t.element_size() for t in tensors) / 2 ** 20


def _worker(rank: int, port: int, args, queue) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from nestgen.training.loop import NestedTrainer
    from nestgen.training.sharding import shard_objective
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.workers)
    torch.set_num_threads(args.threads)
    cfg = _cfg(args)
    cpu = torch.device("cpu")
    trainers = {"ddp": NestedTrainer(cfg, device=cpu, wrap=DistributedDataParallel, rank=rank),
                "fsdp": NestedTrainer(cfg, device=cpu, wrap=shard_objective, rank=rank)}
    g = torch.Generator().manual_seed(rank)
    n = cfg.train.batch_size
    batches = [(torch.randint(0, cfg.model.vocab_size, (n, cfg.model.num_tokens), generator=g),
                torch.randint(0, 10, (n,), generator=g)) for _ in range(4)]
    times = {s: [] for s in STRATEGIES}
    for i in range(args.warmup + args.steps):
        for s in STRATEGIES:
            dist.barrier()
            t0 = time.perf_counter()
            trainers[s].train_step(*batches[i % len(batches)])
            if i >= args.warmup:
                times[s].append(time.perf_counter() - t0)
    if rank == 0:
        queue.put({s: {"step_s_median": statistics.median(times[s]), "state_mib_per_worker": _state_mib(trainers[s])}
                   for s in STRATEGIES} | {"params": trainers["ddp"].core.num_params()})
    dist.destroy_process_group()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--tokens-side", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32, help="global: each worker takes batch-size / workers")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(free_port(), args, queue), nprocs=args.workers, start_method="spawn")
    result = queue.get()
    result["config"] = vars(args)
    ddp, fsdp = result["ddp"], result["fsdp"]
    result["fsdp_over_ddp"] = {"step_time": fsdp["step_s_median"] / ddp["step_s_median"],
                               "state": fsdp["state_mib_per_worker"] / ddp["state_mib_per_worker"]}
    print(f"{result['params'] / 1e6:.2f} M parameters, {args.workers} workers, global batch {args.batch_size}")
    print("strategy  step s (median)  state MiB / worker")
    for s in STRATEGIES:
        print(f"{s:8s}  {result[s]['step_s_median']:15.3f}  {result[s]['state_mib_per_worker']:18.1f}")
    print(f"fsdp / ddp: step time x{result['fsdp_over_ddp']['step_time']:.2f}, "
          f"state x{result['fsdp_over_ddp']['state']:.2f}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
