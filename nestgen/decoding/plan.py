"""The step plan of a decode: what runs at each of the K steps, known before decoding.

Because MaskGIT fixes a deterministic *number* of tokens per step, the whole shape of a
decode (nested size, full pass or cached, query/key counts) follows from the schedule,
the cache policy and the grid. `prepare_decode` parses the schedule and the cache policy
once and plans the steps; the decoder executes that `PreparedDecode` and the FLOP counter
(nestgen.flops.plan_flops) sums over the same one, so the two cannot disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

from nestgen.decoding.cache_policy import CachePolicy, parse_cache_policy
from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.schedule import Schedule, resolve_schedule
from nestgen.masking import decode_mask_counts
from nestgen.model.config import ModelConfig


@dataclass(frozen=True)
class StepPlan:
    step: int
    factor: int          # nest factor of the sub-model run at this step
    full_pass: bool      # True: all 1+N tokens are queries (and the KV cache is rebuilt)
    n_query: int         # query tokens per sample (class token included on full passes,
                         # and with `+cls` on cached ones, with the conditioning tokens)
    n_kv: int            # key/value tokens per sample (always 1+N)
    n_unknown: int       # masked tokens before the step (= positions whose logits are needed)
    n_fixed: int         # tokens fixed by the step


def plan_decode(num_tokens: int, schedule: Schedule, policy: CachePolicy,
                cond_tokens: int = 0) -> list[StepPlan]:
    factors = schedule.factors()
    counts = decode_mask_counts(num_tokens - cond_tokens, len(factors))
    refresh = policy.refresh_steps(factors)
    plans = []
    for t, f in enumerate(factors):
        # Cached step: still-masked tokens plus those fixed at t-1 = the masked count before t-1
        # (+ the class and conditioning tokens when the policy keeps them fresh).
        context = 1 + cond_tokens if policy.fresh_context else 0
        n_q = 1 + num_tokens if refresh[t] else counts[t - 1] + context
        plans.append(StepPlan(t, f, refresh[t], n_q, 1 + num_tokens, counts[t], counts[t] - counts[t + 1]))
    return plans


@dataclass(frozen=True)
class PreparedDecode:
    """Everything about a decode that is fixed before it runs (host side)."""
    schedule: Schedule
    policy: CachePolicy
    plan: list[StepPlan]
    n_cond: int


def prepare_decode(m: ModelConfig, d: DecodeConfig, n_cond: int = 0) -> PreparedDecode:
    """d's schedule (a preset or a compact string, checked against the model and d.steps)
    and cache policy parsed, and the steps planned for `n_cond` given tokens."""
    return prepare_schedule(m, resolve_schedule(d.schedule, m.nest_factors, d.steps), d.cache, n_cond)


def prepare_schedule(m: ModelConfig, schedule: Schedule, cache: str, n_cond: int = 0) -> PreparedDecode:
    """An already parsed schedule with the cache policy `cache`, planned for `n_cond` given tokens."""
    policy = parse_cache_policy(cache)
    return PreparedDecode(schedule, policy, plan_decode(m.num_tokens, schedule, policy, n_cond), n_cond)
