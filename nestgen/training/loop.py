"""Single-process nested training on a tensor of tokens.

`NestedTrainer` owns model, optimizer, LR schedule, optional EMA and the step counter, and
exposes `train_step` so that a distributed driver (pipelines.train, Ray Train) can reuse
exactly this logic per worker.

Resuming continues a run bit for bit: every random draw of a step (the sizes it trains, its
masks and label dropout, the batch `train_on_tokens` picks) comes from a generator seeded by
(run seed, purpose, rank, step), not from a stream that runs across steps. A checkpoint's
step then fixes every later draw, on every rank and for checkpoints of any age, with no
generator state to save; the rest (weights, optimizer, scheduler, EMA, step) is in the
checkpoint. The same scheme as JAX's fold_in of the step into the key. (Under Ray Train the
batches come from Ray Data in pipelines.train_common, whose order this does not cover.)
"""
from __future__ import annotations

import contextlib
import random
import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from nestgen.config import NestgenConfig
from nestgen.device import autocast, resolve_device
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.training.decode_aware import decode_aware_weights
from nestgen.training.ema import WeightEMA
from nestgen.training.metric_window import MetricWindow
from nestgen.training.objective import NestedObjective, sizes_for_step
from nestgen.training.optim import build_optimizer, warmup_cosine_scheduler

# what a step's generator draws (a key of its seed, so the streams are independent)
SIZES, MASKS, BATCHES = 0, 1, 2


def step_seed(seed: int, purpose: int, rank: int, step: int) -> int:
    """The seed of one step's draws: the keys mixed by numpy's SeedSequence, so nearby steps
    and ranks get unrelated streams (seeding with seed + step would not mix them)."""
    return int(np.random.SeedSequence([seed, purpose, rank, step]).generate_state(1, np.uint64)[0])


class NestedTrainer:
    def __init__(self, cfg: NestgenConfig, model: torch.nn.Module | None = None,
                 device: torch.device | None = None, wrap=None, rank: int = 0):
        """`wrap(objective) -> module` lets a distributed driver add DDP (e.g. Ray Train's
        prepare_model) or shard it (nestgen.training.sharding.shard_objective); the
        objective, not the bare model, is wrapped (one forward per step). The optimizer is
        built after wrapping, on the parameters as wrapped (a sharded model's slices)."""
        self.cfg = cfg
        self.device = device or resolve_device(cfg.train.device)
        torch.manual_seed(cfg.seed)
        self.model = (model or NestedTransformer(cfg.model)).to(self.device)
        self.model.checkpoint_blocks = cfg.train.activation_checkpointing
        if cfg.train.compile and not self.model.compile_blocks():
            warnings.warn("train.compile: torch.compile is not available here; training eagerly")
        weights = decode_aware_weights(cfg.train.decode_aware, [cfg.decode.schedule, *cfg.train.decode_aware_schedules],
                                       cfg.model.nest_factors, cfg.model.num_tokens, cfg.train.cond_tokens)
        self.objective = NestedObjective(self.model, cfg.train, weights)
        self.sharded = False
        if wrap is not None:
            # Imported only here: torch.distributed's FSDP and checkpoint modules cost seconds.
            from nestgen.training.sharding import is_sharded
            self.objective = wrap(self.objective)
            self.sharded = is_sharded(self.model)
        self.opt = build_optimizer(self.model, cfg.train)
        self.sched = warmup_cosine_scheduler(self.opt, cfg.train.warmup_steps, cfg.train.steps, cfg.train.min_lr_ratio)
        self.ema = WeightEMA(self.model, cfg.train.ema_decay, self.sharded) if cfg.train.ema_decay > 0 else None
        self.step = 0
        self.rank = rank
        self._gen = torch.Generator(device=self.device)

    @property
    def core(self) -> NestedTransformer:
        return self.model

    def train_step(self, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, float | torch.Tensor]:
        tcfg = self.cfg.train
        self.model.train()
        # the same sizes on every rank (one set of parameters gets gradients), masks per rank
        sizes_rng = random.Random(step_seed(self.cfg.seed, SIZES, 0, self.step))
        factors = sizes_for_step(self.cfg.model.nest_factors, tcfg.num_sampled_sizes(), sizes_rng)
        self._gen.manual_seed(step_seed(self.cfg.seed, MASKS, self.rank, self.step))
        tokens, labels = tokens.to(self.device), labels.to(self.device)
        per_size = torch.zeros(len(factors), device=self.device)
        lam = 1.0
        chunks = list(zip(tokens.chunk(tcfg.grad_accum), labels.chunk(tcfg.grad_accum)))
        for i, (chunk_t, chunk_l) in enumerate(chunks):
            # Gradients are all-reduced once, on the last micro-batch.
            sync = i == len(chunks) - 1 or not hasattr(self.objective, "no_sync")
            with (contextlib.nullcontext() if sync else self.objective.no_sync()), \
                    autocast(self.device, tcfg.precision):
                total, per, lam = self.objective(chunk_t, chunk_l, self.step, factors, self._gen)
                (total / len(chunks)).backward()
            per_size += per.detach().float() / len(chunks)
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tcfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self.ema is not None:
            self.ema.update(self.step)
        self.step += 1
        metrics = {f"loss/f{f}": per_size[i] for i, f in enumerate(factors)}
        metrics["lambda"] = lam
        metrics["lr"] = self.sched.get_last_lr()[0]
        return metrics

    def eval_model(self) -> NestedTransformer | None:
        """The model to sample from: a copy with the EMA weights when kept, else the live
        model. A sharded trainer's is an unsharded copy, gathered (a collective: every rank
        calls it; rank 0 gets the copy on its device, the others None)."""
        if self.ema is None and not self.sharded:
            return self.core
        state = self.ema.state_dict() if self.ema is not None else self.model_state()
        if not state:
            return None
        with torch.device("meta"):        # no initialisation: every weight comes from `state`
            copy = NestedTransformer(self.core.cfg)
        copy.load_state_dict(state, assign=True)
        return copy.to(self.device)

    def model_state(self) -> dict:
        """The model's state_dict; a sharded model's is gathered (a collective: every rank
        calls it, rank 0 gets the state, the others {})."""
        if not self.sharded:
            return self.core.state_dict()
        from nestgen.training.sharding import full_model_state
        return full_model_state(self.core)

    def state(self) -> dict:
        """Optimizer, scheduler, EMA and step: the rest of a checkpoint (gathered as model_state:
        a sharded trainer's optimizer state and EMA reach rank 0, the others get {})."""
        if self.sharded:
            from nestgen.training.sharding import full_optimizer_state
            opt_state = full_optimizer_state(self.core, self.opt)
        else:
            opt_state = self.opt.state_dict()
        return {"optimizer": opt_state,
                "scheduler": self.sched.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "step": self.step}

    def load_state(self, ckpt: dict) -> None:
        """Resume from a checkpoint (of a sharded run or not); every rank reads the whole file."""
        if self.sharded:
            from nestgen.training.sharding import load_full_state
            load_full_state(self.core, self.opt, ckpt["model"], ckpt["optimizer"])
        else:
            self.core.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        elif self.ema is not None:      # a checkpoint without one: the average starts at its weights
            self.ema = WeightEMA(self.model, self.cfg.train.ema_decay, self.sharded)
        self.step = int(ckpt["step"])


def train_on_tokens(cfg: NestgenConfig, tokens: torch.Tensor, labels: torch.Tensor,
                    progress: bool = True, trainer: NestedTrainer | None = None
                    ) -> tuple[NestedTrainer, list[dict]]:
    """Train for cfg.train.steps steps on random batches of (tokens, labels); returns the
    trainer and a history of logged metrics (one dict every log_every steps)."""
    tcfg = cfg.train
    trainer = trainer or NestedTrainer(cfg)
    gen = torch.Generator()
    history: list[dict] = []
    window = MetricWindow()
    bar = tqdm(total=tcfg.steps, initial=trainer.step, desc="train", disable=not progress,
               dynamic_ncols=True)
    t0, seen = time.perf_counter(), 0
    while trainer.step < tcfg.steps:
        gen.manual_seed(step_seed(cfg.seed, BATCHES, trainer.rank, trainer.step))
        idx = torch.randint(0, tokens.shape[0], (tcfg.batch_size,), generator=gen)
        m = trainer.train_step(tokens[idx], labels[idx])
        seen += tcfg.batch_size
        window.add(m)
        if trainer.step % tcfg.log_every == 0 or trainer.step == tcfg.steps:
            row = window.means()
            elapsed = time.perf_counter() - t0
            row.update(step=trainer.step, samples_per_s=seen / elapsed,
                       tokens_per_s=seen * tokens.shape[1] / elapsed)
            history.append(row)
            window.reset()
            bar.set_postfix({k: f"{row[k]:.3f}" for k in row if k.startswith("loss/")})
        bar.update(1)
    bar.close()
    return trainer, history
