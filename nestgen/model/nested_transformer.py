"""The nested (Matryoshka) bidirectional transformer over a token grid.

One set of weights holds sub-models of width D/f for every nest factor f. Sub-model f reads
the first D/f channels of every width-carrying tensor through *views* of the full
parameters: embeddings, LayerNorms, the first H/f heads of attention, the MLP, the head.
Its forward is exactly a dense pre-norm transformer of width D/f whose weights are those
slices (tests/test_nested_transformer.py checks this against torch's own encoder layer).

Sequence layout: [class token] + N grid tokens (flattened T*H*W). Token id `vocab_size` is
[MASK]; class id `num_classes` is the null class used for classifier-free guidance.

Cached decoding (docs/method.md, "KV cache rule"): `forward(..., cache=c)` is a full pass that fills `c`
with every layer's K/V; `forward_active(..., positions, cache=c)` runs only the given grid
positions as queries, writes their fresh K/V into `c` and attends over all cached K/V.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nestgen.model.config import ModelConfig


def sliced_linear(layer: nn.Linear, x: torch.Tensor, d_in: int, d_out: int) -> torch.Tensor:
    """`layer` restricted to its first d_out outputs and d_in inputs (views, no copies)."""
    bias = None if layer.bias is None else layer.bias[:d_out]
    return F.linear(x, layer.weight[:d_out, :d_in], bias)


def sliced_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1]
    return F.layer_norm(x, (d,), norm.weight[:d], norm.bias[:d], norm.eps)


@dataclass
class KVCache:
    """Per-layer keys/values (B, heads, 1+N, head_dim) of one nested width."""
    factor: int = 0
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)

    def clear(self) -> None:
        self.factor, self.keys, self.values = 0, [], []


# Cached passes run their queries in a count padded to a multiple of this (zero queries, whose
# outputs are dropped). PyTorch's CPU attention kernel works in blocks of 32/64/256 queries and
# rounds a block of 1 or 2 queries differently from a larger one, so without the padding a
# query's output depended on how many other queries its pass had: a row decoded among others
# (nestgen.decoding.step_decoder pads rows to the longest) would not match its solo decode.
# The padded queries' attention is real work: nestgen.flops charges it.
QUERY_ALIGN = 8


class NestedAttention(nn.Module):
    """Self-attention whose first H/f heads form the nested sub-model's attention.

    q, k, v live in one (3D, D) matrix with rows interleaved per head ([q_h; k_h; v_h] for
    head h), so the first H/f heads of all three are the contiguous rows [:3D/f]: every
    nested width is one slice and one GEMM. The hot path uses view/transpose rather than
    einops because decoding on GPU is bound by per-op overhead.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.width
        self.head_dim = d // cfg.heads
        self.full_width = cfg.attention_width == "full"
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                seq_idx: torch.Tensor | None = None) -> torch.Tensor:
        b, n, width = x.shape
        d_att = self.o.weight.shape[0] if self.full_width else width
        heads = d_att // self.head_dim
        qkv = sliced_linear(self.qkv, x, width, 3 * d_att).view(b, n, heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)            # each (B, heads, n, hd)
        if cache is not None:
            if seq_idx is None:             # full pass: this layer's cache is exactly k, v
                if len(cache.keys) <= layer:
                    cache.keys.append(k.contiguous())
                    cache.values.append(v.contiguous())
                else:
                    cache.keys[layer], cache.values[layer] = k.contiguous(), v.contiguous()
            else:                           # active tokens: fresh K/V overwrite their stale ones
                idx = seq_idx[:, None, :, None].expand(-1, heads, -1, self.head_dim)
                cache.keys[layer].scatter_(2, idx, k)
                cache.values[layer].scatter_(2, idx, v)
                k, v = cache.keys[layer], cache.values[layer]
        if seq_idx is not None and n % QUERY_ALIGN:
            q = F.pad(q, (0, 0, 0, QUERY_ALIGN - n % QUERY_ALIGN))
        out = F.scaled_dot_product_attention(q, k, v)[:, :, :n].transpose(1, 2).reshape(b, n, d_att)
        return sliced_linear(self.o, out, d_att, width)


class NestedMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ratio = cfg.mlp_ratio
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1]
        h = F.gelu(sliced_linear(self.fc1, x, w, self.ratio * w))
        return sliced_linear(self.fc2, h, self.ratio * w, w)


class NestedBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = NestedAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = NestedMLP(cfg)

    def forward(self, x, cache=None, layer=0, seq_idx=None):
        x = x + self.attn(sliced_layer_norm(self.ln1, x), cache, layer, seq_idx)
        return x + self.mlp(sliced_layer_norm(self.ln2, x))


class NestedTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, n = cfg.width, cfg.num_tokens
        self.tok_emb = nn.Embedding(cfg.vocab_size + 1, d)        # + [MASK]
        self.cls_emb = nn.Embedding(cfg.num_classes + 1, d)       # + null class
        self.pos_emb = nn.Parameter(torch.zeros(1 + n, d))
        self.blocks = nn.ModuleList(NestedBlock(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(d)
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.head = nn.Linear(d, cfg.vocab_size, bias=False) if cfg.output_head == "separate" else None
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)
        # Training only: recompute each block's activations in backward instead of keeping
        # them (memory for batch size); full passes without a cache honour it.
        self.checkpoint_blocks = False

    def compile_blocks(self) -> bool:
        """torch.compile every block in place (parameter names unchanged). Blocks, not the
        whole model: each nested width, and each query count of the decode loop, then costs
        the compilation of one small graph. False (and eager) where this torch cannot compile."""
        if not hasattr(torch, "compile") or not torch._dynamo.is_dynamo_supported():
            return False
        for block in self.blocks:
            block.compile()
        return True

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def width_of(self, factor: int) -> int:
        if factor not in self.cfg.nest_factors:
            raise ValueError(f"nest factor {factor} is not one of {self.cfg.nest_factors}")
        return self.cfg.width // factor

    def head_weight(self, width: int) -> torch.Tensor:
        """(V, width) output projection of the sub-model of that width (tied: the token embedding)."""
        weight = self.head.weight if self.head is not None else self.tok_emb.weight[: self.cfg.vocab_size]
        return weight[:, :width]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Final-norm features (..., w) of the sub-model of width w -> logits (..., V)."""
        return F.linear(features, self.head_weight(features.shape[-1]), self.head_bias)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return self.logits(sliced_layer_norm(self.ln_f, h))

    def features(self, tokens: torch.Tensor, labels: torch.Tensor, factor: int = 1,
                 cache: KVCache | None = None) -> torch.Tensor:
        """Full pass up to the output head: final-norm features (B, N, D/factor) of the grid."""
        return sliced_layer_norm(self.ln_f, self._trunk(tokens, labels, factor, cache))

    def _trunk(self, tokens, labels, factor, cache):
        w = self.width_of(factor)
        x = torch.cat([self.cls_emb.weight[labels, None, :w], self.tok_emb.weight[tokens, :w]], dim=1)
        x = x + self.pos_emb[:, :w]
        if cache is not None:
            cache.factor = factor
        recompute = self.checkpoint_blocks and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x, cache, i)
        return x[:, 1:]

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, factor: int = 1,
                cache: KVCache | None = None, head_positions: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Full pass. tokens (B, N) ids (mask id allowed), labels (B,) -> logits (B, N, V),
        or (B, n, V) at grid `head_positions` (B, n) only (decoding needs no other logits)."""
        x = self._trunk(tokens, labels, factor, cache)
        if head_positions is not None:
            x = x.gather(1, head_positions[..., None].expand(-1, -1, x.shape[-1]))
        return self._head(x)

    def forward_active(self, tokens: torch.Tensor, positions: torch.Tensor, factor: int,
                       cache: KVCache, n_head: int | None = None,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        """Cached pass over grid `positions` (B, n) only -> logits (B, n, V) at those positions
        (at the first `n_head` of them when given).

        `cache` must hold this width's K/V from an earlier full pass; the active tokens' fresh
        K/V replace their cached entries, every other position's K/V is reused as cached.
        With `labels` (B,) the class token is a query too, so its K/V are refreshed as well.
        """
        if cache.factor != factor or not cache.keys:
            raise ValueError(f"KV cache holds width factor {cache.factor or None}, not {factor}: "
                             "a full pass must refresh it first")
        w = self.width_of(factor)
        seq_idx = positions + 1
        x = self.tok_emb.weight[tokens.gather(1, positions), :w] + self.pos_emb[seq_idx, :w]
        if labels is not None:
            cls = self.cls_emb.weight[labels, None, :w] + self.pos_emb[:1, :w]
            x = torch.cat([cls, x], dim=1)
            seq_idx = torch.cat([torch.zeros_like(seq_idx[:, :1]), seq_idx], dim=1)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, seq_idx)
        if labels is not None:
            x = x[:, 1:]
        return self._head(x if n_head is None else x[:, :n_head])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
