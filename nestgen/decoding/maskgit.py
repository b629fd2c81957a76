"""MaskGIT parallel decoding with a decode-time model schedule and KV caching.

Every random draw of sample i is a function of seeds[i], the step and the grid position
(nestgen.decoding.noise), so a sample does not depend on which other samples share its
batch. Tokens are sampled by inverse CDF (one uniform per token); which sampled tokens
are kept follows MaskGIT: log-probability plus annealed Gumbel noise, most confident first.

Temperature and guidance scale are per row (`RowSettings`), so requests that differ only in
them share one decode: only the guided rows get an unconditional pass, and every row's
arithmetic is the same as when it is decoded alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Sequence

import torch

from nestgen.decoding.config import DecodeConfig
from nestgen.decoding import noise
from nestgen.decoding.cache_policy import CachePolicy
from nestgen.decoding.plan import PreparedDecode, StepPlan, prepare_decode
from nestgen.decoding.schedule import Schedule
from nestgen.model.nested_transformer import KVCache, NestedTransformer


@dataclass
class DecodeResult:
    tokens: torch.Tensor                     # (B, N) decoded token ids
    plan: list[StepPlan]
    schedule: Schedule
    cache: CachePolicy
    guided: bool
    history: list[torch.Tensor] = field(default_factory=list)   # tokens after each step (opt.)


# DecodeConfig fields that are per row inside one decode (RowSettings): requests that differ
# only in these share a forward pass (nestgen.serving.job.Job.group_key).
ROW_SETTINGS = ("temperature", "guidance_scale")


def shared_settings(cfg: DecodeConfig) -> tuple:
    """The values of cfg that every row of one decode shares (all but ROW_SETTINGS)."""
    return tuple(getattr(cfg, f.name) for f in fields(cfg) if f.name not in ROW_SETTINGS)


def _guidance_factor(kind: str, t: int, steps: int) -> float:
    """The guidance schedule: the share of each row's scale applied at step t."""
    r = (t + 1) / steps
    if kind == "linear":
        return r
    if kind == "cosine":
        return (1 - math.cos(math.pi * r)) / 2
    return 1.0


def _temperature_factor(kind: str, t: int, steps: int) -> float:
    return 1 - t / steps if kind == "linear" else 1.0


def _sample(logits: torch.Tensor, temp: torch.Tensor | None, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw from softmax(logits / temp) by inverse CDF (temp (B,) per row, None: 1 for every
    row; u (B, n) in (0, 1)); returns the ids and their log-probability under softmax(logits)
    (MaskGIT's confidence).

    The weights are exp((logits - max) / temp) for every temperature: the inverse CDF scales u
    by their total, so they need no normalising, and the max shift keeps them finite at any
    temperature. At temperature 1 they are the terms of the log-sum-exp itself, so `temp=None`
    skips a division and an exp over the vocabulary (a third of a step at width D/8 went to
    these passes) and gives what dividing by exactly 1 gives: a row's sample does not depend
    on its neighbours' temperatures."""
    shifted = logits - logits.amax(-1, keepdim=True)
    weights = shifted.exp()
    log_z = weights.sum(-1, keepdim=True).log_()
    if temp is not None:
        weights = (shifted / temp[:, None, None]).exp_()
    cdf = weights.cumsum_(-1)
    idx = torch.searchsorted(cdf, (u[..., None] * cdf[..., -1:])).clamp_(max=logits.shape[-1] - 1)
    return idx[..., 0], (shifted.gather(-1, idx) - log_z)[..., 0]


@dataclass(frozen=True)
class RowSettings:
    """The per-row sampler settings of one decode, as device tensors (static shapes: a CUDA
    graph copies new values into them, nestgen.decoding.cuda_graph)."""
    temperature: torch.Tensor     # (B,) float32
    guided: torch.Tensor          # (G,) long: the rows with guidance scale > 0, ascending
    guidance: torch.Tensor        # (G,) float32: their scales
    unit_temperature: bool        # every row at temperature 1 (sampling skips the division)

    @property
    def n_guided(self) -> int:
        return self.guided.shape[0]


def row_settings(cfg: DecodeConfig, b: int, device, temperature: Sequence[float] | None = None,
                 guidance_scale: Sequence[float] | None = None) -> RowSettings:
    """RowSettings for `b` rows: the given per-row values, else cfg's scalar for every row."""
    temps = [cfg.temperature] * b if temperature is None else [float(x) for x in temperature]
    scales = [cfg.guidance_scale] * b if guidance_scale is None else [float(x) for x in guidance_scale]
    for name, values in (("temperatures", temps), ("guidance scales", scales)):
        if len(values) != b:
            raise ValueError(f"got {len(values)} {name} for {b} samples")
    if not all(t > 0 for t in temps) or not all(g >= 0 for g in scales):
        raise ValueError("temperatures must be > 0 and guidance scales >= 0")
    guided = [i for i, g in enumerate(scales) if g > 0]
    return RowSettings(torch.tensor(temps, dtype=torch.float32, device=device),
                       torch.tensor(guided, dtype=torch.long, device=device),
                       torch.tensor([scales[i] for i in guided], dtype=torch.float32, device=device),
                       all(t == 1.0 for t in temps) and cfg.temperature_schedule == "constant")


def seed_tensor(seeds: Sequence[int] | None, b: int, device) -> torch.Tensor:
    seeds = list(range(b)) if seeds is None else list(seeds)
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for {b} samples")
    return torch.tensor([int(x) for x in seeds], dtype=torch.long, device=device)


@torch.no_grad()
def decode(model: NestedTransformer, labels: torch.Tensor, cfg: DecodeConfig,
           seeds: Sequence[int] | None = None, cond: torch.Tensor | None = None,
           keep_history: bool = False, temperature: Sequence[float] | None = None,
           guidance_scale: Sequence[float] | None = None, prep: PreparedDecode | None = None) -> DecodeResult:
    """Generate token grids for class `labels` (B,) (null class = unconditional).

    cond: (B, n_cond) given leading tokens (frame prediction, `input->input`): they sit in
    the grid, are never masked, and are returned unchanged.
    temperature, guidance_scale: one value per row; None: cfg's value for every row.
    prep: cfg's decode as the caller prepared it (nestgen.decoding.plan.prepare_decode, e.g.
    an evaluation job's, whose FLOPs were counted on it); None: prepared here.
    """
    device = next(model.parameters()).device
    labels = labels.to(device)
    prep = prep or prepare_decode(model.cfg, cfg, 0 if cond is None else cond.shape[1])
    seed_t = seed_tensor(seeds, labels.shape[0], device)
    rows = row_settings(cfg, labels.shape[0], device, temperature, guidance_scale)
    history: list[torch.Tensor] | None = [] if keep_history else None
    was_training = model.training
    model.eval()
    try:
        tokens = decode_loop(model, labels, seed_t, None if cond is None else cond.to(device), cfg, prep,
                             rows, history)
    finally:
        model.train(was_training)
    return DecodeResult(tokens, prep.plan, prep.schedule, prep.policy, rows.n_guided > 0, history or [])


def decode_loop(model: NestedTransformer, labels: torch.Tensor, seed_t: torch.Tensor,
                cond: torch.Tensor | None, cfg: DecodeConfig, prep: PreparedDecode,
                rows: RowSettings, history: list | None = None) -> torch.Tensor:
    """The K steps, device ops only: no host sync and static shapes, so that the whole
    loop can be captured as one CUDA graph (nestgen.decoding.cuda_graph).

    The guided rows run a second time with the null class, appended after the B rows
    (B + G rows per forward; the KV cache holds all of them); every other row's logits are
    its conditional ones as they come."""
    mcfg = model.cfg
    device = labels.device
    b, n = labels.shape[0], mcfg.num_tokens
    plan, k = prep.plan, len(prep.plan)
    tokens = torch.full((b, n), mcfg.mask_id, dtype=torch.long, device=device)
    if cond is not None:
        tokens[:, :prep.n_cond] = cond
    unknown_pos = torch.arange(prep.n_cond, n, device=device).expand(b, -1).contiguous()
    guided = rows.n_guided > 0
    labels_in = torch.cat([labels, labels.new_full((rows.n_guided,), mcfg.null_class)]) if guided else labels
    dup = (lambda x: torch.cat([x, x.index_select(0, rows.guided)])) if guided else (lambda x: x)
    cache = KVCache() if prep.policy.enabled else None
    fixed_prev: torch.Tensor | None = None
    fresh = prep.policy.fresh_context
    # `+cls`: the class token and the conditioning tokens are queries at every cached step.
    context_pos = torch.arange(prep.n_cond, device=device).expand(b, -1)
    for p in plan:
        tok_in = dup(tokens)
        if p.full_pass:
            logits = model(tok_in, labels_in, p.factor, cache=cache, head_positions=dup(unknown_pos))
        else:
            active = torch.cat([unknown_pos, fixed_prev] + ([context_pos] if fresh else []), dim=1)
            logits = model.forward_active(tok_in, dup(active), p.factor, cache, n_head=p.n_unknown,
                                          labels=labels_in if fresh else None)
        unknown_pos, fixed_prev = sample_step(logits, tokens, unknown_pos, seed_t, rows, cfg, p.step, k, p.n_fixed)
        if history is not None:
            history.append(tokens.clone())
    return tokens


def sample_step(logits: torch.Tensor, tokens: torch.Tensor, unknown_pos: torch.Tensor, seed_t: torch.Tensor,
                rows: RowSettings, cfg: DecodeConfig, step: int, k: int, n_fixed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One MaskGIT step after the forward pass, for B rows at the same step `step` of K = k:
    guidance, temperature, sampling, the annealed-confidence choice of the n_fixed tokens to
    keep, written into `tokens` (B, N) in place. Returns (the still-unknown positions, the
    positions fixed now).

    logits: (B + G, n_unknown, V), the guided rows' unconditional logits after the B rows.
    Every op is per row (a row's result depends on its own logits, seed and settings only),
    which is what lets the step-level loop (nestgen.decoding.step_decoder) regroup rows of any
    schedules and progress between steps and still give each row its solo tokens."""
    b = tokens.shape[0]
    logits = logits.float()
    if rows.n_guided > 0:
        g = (rows.guidance * _guidance_factor(cfg.guidance_schedule, step, k))[:, None, None]
        cond_l, uncond_l = logits[:b], logits[b:]
        logits = cond_l.index_copy(0, rows.guided, (1 + g) * cond_l.index_select(0, rows.guided) - g * uncond_l)
    temp = None if rows.unit_temperature else \
        rows.temperature * _temperature_factor(cfg.temperature_schedule, step, k)
    sampled, logp = _sample(logits, temp, noise.uniform(seed_t, step, unknown_pos, stream=0))
    n_unknown = unknown_pos.shape[1]
    if n_fixed == n_unknown:
        order = torch.arange(n_unknown, device=tokens.device).expand(b, -1)
    else:
        anneal = cfg.choice_temperature * (1 - (step + 1) / k)
        conf = logp + anneal * noise.gumbel(seed_t, step, unknown_pos, stream=1)
        order = conf.argsort(dim=1, descending=True)
    fix_idx = order[:, :n_fixed]
    fixed_pos = unknown_pos.gather(1, fix_idx)
    tokens.scatter_(1, fixed_pos, sampled.gather(1, fix_idx))
    return unknown_pos.gather(1, order[:, n_fixed:]), fixed_pos
