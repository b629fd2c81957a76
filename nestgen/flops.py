"""Analytic FLOP accounting per generated sample (docs/method.md, "FLOP count").

Matmul FLOPs only (2 per multiply-add), as torch.utils.flop_counter counts them:
per layer 2 n_q (3 D_m d_a + d_a D_m + 2 R D_m^2) for the q/k/v/o and MLP projections
plus 4 n_q' n_kv d_a for attention, where d_a = D_m (nested attention) or D (`full`) and n_q'
is n_q, on a cached pass rounded up to the model's query alignment (the padded queries run);
plus the output head 2 n_h D_m V, with n_h the positions whose logits are computed: when
decoding only the still-masked ones, on full and cached passes alike (the model is asked for
no other logits); in training all N. Guided steps run twice (conditional + unconditional).
"""
from __future__ import annotations

from dataclasses import dataclass

from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.plan import PreparedDecode, StepPlan, prepare_decode
from nestgen.model.config import ModelConfig
from nestgen.model.nested_transformer import QUERY_ALIGN


def forward_flops(m: ModelConfig, factor: int, n_query: int, n_kv: int, n_head: int, cached: bool = False) -> int:
    dm = m.width // factor
    da = m.width if m.attention_width == "full" else dm
    proj = 2 * n_query * (4 * dm * da + 2 * m.mlp_ratio * dm * dm)
    attn_queries = -(-n_query // QUERY_ALIGN) * QUERY_ALIGN if cached else n_query
    attn = 4 * attn_queries * n_kv * da
    return m.depth * (proj + attn) + 2 * n_head * dm * m.vocab_size


def training_flops_per_sample(m: ModelConfig, factors: list[int]) -> int:
    """Forward + backward (3x forward) of every trained size on one full sequence."""
    n = m.num_tokens
    return sum(3 * forward_flops(m, f, n + 1, n + 1, n) for f in factors)


@dataclass
class FlopReport:
    steps: list[tuple[StepPlan, int]]       # (plan, FLOPs per sample) for every step

    @property
    def total(self) -> int:
        return sum(f for _, f in self.steps)

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    def table(self) -> str:
        rows = ["step factor full n_query n_kv n_unknown   MFLOPs"]
        for p, f in self.steps:
            rows.append(f"{p.step:4d} {p.factor:6d} {'yes' if p.full_pass else 'no':>4} {p.n_query:7d} "
                        f"{p.n_kv:4d} {p.n_unknown:9d} {f / 1e6:8.2f}")
        rows.append(f"total GFLOPs per sample: {self.gflops:.4f}")
        return "\n".join(rows)


def plan_flops(m: ModelConfig, prep: PreparedDecode, guided: bool) -> FlopReport:
    """The FLOPs of a prepared decode (the plan the decoder runs), per sample; `guided`: with
    classifier-free guidance (every step runs twice)."""
    mult = 2 if guided else 1
    return FlopReport([(p, mult * forward_flops(m, p.factor, p.n_query, p.n_kv, p.n_unknown,
                                                    cached=not p.full_pass))
                       for p in prep.plan])


def decode_flops(m: ModelConfig, d: DecodeConfig, cond_tokens: int = 0) -> FlopReport:
    """The FLOPs of decoding as `d` says with `cond_tokens` given tokens, per sample."""
    return plan_flops(m, prepare_decode(m, d, cond_tokens), d.guidance_scale > 0)
