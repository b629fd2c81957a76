"""MaskGIT parallel decoding with a decode-time model schedule and KV caching.

Every random draw of sample i is a function of seeds[i], the step and the grid position
(nestgen.decoding.noise), so a sample does not depend on which other samples share its
batch. Tokens are sampled by inverse CDF (one uniform per token); which sampled tokens
are kept follows MaskGIT: log-probability plus annealed Gumbel noise, most confident first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from nestgen.decoding.config import DecodeConfig
from nestgen.decoding import noise
from nestgen.decoding.cache_policy import CachePolicy, parse_cache_policy
from nestgen.decoding.plan import StepPlan, plan_decode
from nestgen.decoding.schedule import Schedule, resolve_schedule
from nestgen.model.nested_transformer import KVCache, NestedTransformer


@dataclass
class DecodeResult:
    tokens: torch.Tensor                     # (B, N) decoded token ids
    plan: list[StepPlan]
    schedule: Schedule
    cache: CachePolicy
    guided: bool
    history: list[torch.Tensor] = field(default_factory=list)   # tokens after each step (opt.)


def _guidance_at(scale: float, kind: str, t: int, steps: int) -> float:
    r = (t + 1) / steps
    if kind == "linear":
        return scale * r
    if kind == "cosine":
        return scale * (1 - math.cos(math.pi * r)) / 2
    return scale


def _temperature_at(temp: float, kind: str, t: int, steps: int) -> float:
    return temp * (1 - t / steps) if kind == "linear" else temp


def _sample(logits: torch.Tensor, temp: float, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw from softmax(logits / temp) by inverse CDF (u (B, n) in (0, 1)); returns the ids
    and their log-probability under softmax(logits) (MaskGIT's confidence). One log-sum-exp
    serves both: at width D/8 these passes over the vocabulary were a third of a step."""
    lse = logits.logsumexp(-1, keepdim=True)
    probs = (logits - lse).exp_() if temp == 1.0 else torch.softmax(logits / temp, dim=-1)
    cdf = probs.cumsum_(-1)
    idx = torch.searchsorted(cdf, (u[..., None] * cdf[..., -1:])).clamp_(max=logits.shape[-1] - 1)
    return idx[..., 0], (logits.gather(-1, idx) - lse)[..., 0]


@dataclass(frozen=True)
class PreparedDecode:
    """Everything about a decode that is fixed before it runs (host side)."""
    schedule: Schedule
    policy: CachePolicy
    plan: list[StepPlan]
    n_cond: int


def prepare(model: NestedTransformer, cfg: DecodeConfig, n_cond: int = 0) -> PreparedDecode:
    schedule = resolve_schedule(cfg.schedule, model.cfg.nest_factors, cfg.steps)
    policy = parse_cache_policy(cfg.cache)
    return PreparedDecode(schedule, policy, plan_decode(model.cfg.num_tokens, schedule, policy, n_cond), n_cond)


def seed_tensor(seeds: Sequence[int] | None, b: int, device) -> torch.Tensor:
    seeds = list(range(b)) if seeds is None else list(seeds)
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for {b} samples")
    return torch.tensor([int(x) for x in seeds], dtype=torch.long, device=device)


@torch.no_grad()
def decode(model: NestedTransformer, labels: torch.Tensor, cfg: DecodeConfig,
           seeds: Sequence[int] | None = None, cond: torch.Tensor | None = None,
           keep_history: bool = False) -> DecodeResult:
    """Generate token grids for class `labels` (B,) (null class = unconditional).

    cond: (B, n_cond) given leading tokens (frame prediction, `input->input`): they sit in
    the grid, are never masked, and are returned unchanged.
    """
    device = next(model.parameters()).device
    labels = labels.to(device)
    prep = prepare(model, cfg, 0 if cond is None else cond.shape[1])
    seed_t = seed_tensor(seeds, labels.shape[0], device)
    history: list[torch.Tensor] | None = [] if keep_history else None
    was_training = model.training
    model.eval()
    try:
        tokens = decode_loop(model, labels, seed_t, None if cond is None else cond.to(device), cfg, prep, history)
    finally:
        model.train(was_training)
    return DecodeResult(tokens, prep.plan, prep.schedule, prep.policy, cfg.guidance_scale > 0, history or [])


def decode_loop(model: NestedTransformer, labels: torch.Tensor, seed_t: torch.Tensor,
                cond: torch.Tensor | None, cfg: DecodeConfig, prep: PreparedDecode,
                history: list | None = None) -> torch.Tensor:
    """The K steps, device ops only: no host sync and static shapes, so that the whole
    loop can be captured as one CUDA graph (nestgen.decoding.cuda_graph)."""
    mcfg = model.cfg
    device = labels.device
    b, n = labels.shape[0], mcfg.num_tokens
    plan, k = prep.plan, len(prep.plan)
    tokens = torch.full((b, n), mcfg.mask_id, dtype=torch.long, device=device)
    if cond is not None:
        tokens[:, :prep.n_cond] = cond
    unknown_pos = torch.arange(prep.n_cond, n, device=device).expand(b, -1).contiguous()
    guided = cfg.guidance_scale > 0
    labels_in = torch.cat([labels, torch.full_like(labels, mcfg.null_class)]) if guided else labels
    dup = (lambda x: torch.cat([x, x])) if guided else (lambda x: x)
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
        logits = logits.float()
        if guided:
            g = _guidance_at(cfg.guidance_scale, cfg.guidance_schedule, p.step, k)
            cond_l, uncond_l = logits.chunk(2)
            logits = (1 + g) * cond_l - g * uncond_l
        temp = _temperature_at(cfg.temperature, cfg.temperature_schedule, p.step, k)
        sampled, logp = _sample(logits, temp, noise.uniform(seed_t, p.step, unknown_pos, stream=0))
        if p.n_fixed == p.n_unknown:
            order = torch.arange(p.n_unknown, device=device).expand(b, -1)
        else:
            anneal = cfg.choice_temperature * (1 - (p.step + 1) / k)
            conf = logp + anneal * noise.gumbel(seed_t, p.step, unknown_pos, stream=1)
            order = conf.argsort(dim=1, descending=True)
        fix_idx = order[:, : p.n_fixed]
        fixed_pos = unknown_pos.gather(1, fix_idx)
        tokens.scatter_(1, fixed_pos, sampled.gather(1, fix_idx))
        unknown_pos = unknown_pos.gather(1, order[:, p.n_fixed:])
        fixed_prev = fixed_pos
        if history is not None:
            history.append(tokens.clone())
    return tokens
