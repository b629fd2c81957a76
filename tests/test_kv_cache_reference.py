"""Cached decoding against a slow reference of the KV cache rule (docs/method.md, "KV cache rule").

The reference decodes one sample at a time and keeps an explicit key/value store per layer
(and per guidance branch). It applies the rule as written rather than nestgen's step plan:

- a step is a full pass (every token recomputed, the store rebuilt at the step's width) at
  step 0, when the nest factor changes, with `every:r` when r steps have passed since the
  last full pass, and at every step without a cache;
- at any other step the queries are the tokens that are still masked or whose id changed
  since the previous step, plus, with `+cls`, the class token and the conditioning tokens;
  only their K/V are recomputed, every other token attends with the K/V in the store.

Sampling follows MaskGIT with nestgen's counter-based noise (a function of seed, step and
position, so the reference may visit positions in any order). Equal tokens for every seed
mean nestgen's batched decoder applies exactly this rule.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from nestgen.decoding.config import DecodeConfig
from nestgen.decoding import noise
from nestgen.decoding.maskgit import decode
from nestgen.decoding.schedule import resolve_schedule
from nestgen.masking import decode_mask_counts
from nestgen.model.nested_transformer import NestedTransformer, sliced_layer_norm, sliced_linear


def _guidance(d: DecodeConfig, t: int) -> float:
    r = (t + 1) / d.steps
    return {"constant": d.guidance_scale, "linear": d.guidance_scale * r,
            "cosine": d.guidance_scale * (1 - math.cos(math.pi * r)) / 2}[d.guidance_schedule]


class _Branch:
    """One forward stream (conditional or null class) of one sample with its own K/V store."""

    def __init__(self, model: NestedTransformer, label: int):
        self.model, self.label, self.store = model, label, None

    def run(self, tokens: torch.Tensor, queries: list[int], factor: int, full: bool) -> torch.Tensor:
        """Recompute sequence positions `queries` (0 = class token, j = grid token j-1) at
        width D/factor; returns their final hidden states (n, D/factor)."""
        m, cfg = self.model, self.model.cfg
        w = cfg.width // factor
        d_att = cfg.width if cfg.attention_width == "full" else w
        hd = cfg.width // cfg.heads
        heads = d_att // hd
        n_seq = 1 + cfg.num_tokens
        if full:
            self.store = [(torch.zeros(heads, n_seq, hd), torch.zeros(heads, n_seq, hd)) for _ in m.blocks]
        rows = [m.cls_emb.weight[self.label, :w] if j == 0 else m.tok_emb.weight[tokens[j - 1], :w]
                for j in queries]
        x = torch.stack(rows) + m.pos_emb[queries, :w]
        for blk, (keys, values) in zip(m.blocks, self.store):
            qkv = sliced_linear(blk.attn.qkv, sliced_layer_norm(blk.ln1, x), w, 3 * d_att)
            q, k, v = qkv.view(len(queries), heads, 3, hd).permute(2, 1, 0, 3)     # (heads, n, hd)
            keys[:, queries], values[:, queries] = k, v
            att = torch.softmax(q @ keys.transpose(1, 2) / math.sqrt(hd), dim=-1) @ values
            x = x + sliced_linear(blk.attn.o, att.transpose(0, 1).reshape(len(queries), d_att), d_att, w)
            x = x + blk.mlp(sliced_layer_norm(blk.ln2, x))
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        m = self.model
        w = hidden.shape[-1]
        weight = m.head.weight if m.head is not None else m.tok_emb.weight[: m.cfg.vocab_size]
        return F.linear(sliced_layer_norm(m.ln_f, hidden), weight[:, :w], m.head_bias)


@torch.no_grad()
def reference_decode(model: NestedTransformer, label: int, seed: int, d: DecodeConfig,
                     cond: list[int] = ()) -> tuple[torch.Tensor, list[int]]:
    """-> (tokens (N,), number of query tokens at each step)."""
    cfg = model.cfg
    text = d.cache.strip()
    cached = text != "none"
    fresh_context = text.endswith("+cls")
    every = int(text.removesuffix("+cls").split(":")[1]) if text.startswith("every:") else 0
    factors = resolve_schedule(d.schedule, cfg.nest_factors, d.steps).factors()
    n, n_cond = cfg.num_tokens, len(cond)
    counts = decode_mask_counts(n - n_cond, d.steps)
    tokens = torch.full((n,), cfg.mask_id, dtype=torch.long)
    tokens[:n_cond] = torch.tensor(list(cond), dtype=torch.long)
    branches = [_Branch(model, label)] + ([_Branch(model, cfg.num_classes)] if d.guidance_scale > 0 else [])
    seed_t = torch.tensor([seed])
    previous, since_full, n_queries = None, 0, []
    for t, f in enumerate(factors):
        full = not cached or t == 0 or f != factors[t - 1] or (every > 0 and since_full >= every)
        since_full = 1 if full else since_full + 1
        masked = [j for j in range(n) if tokens[j] == cfg.mask_id]
        if full:
            queries = list(range(1 + n))
        else:
            changed = [j for j in range(n) if tokens[j] != previous[j]]
            grid = sorted(set(masked) | set(changed)) + (list(range(n_cond)) if fresh_context else [])
            queries = ([0] if fresh_context else []) + [j + 1 for j in sorted(set(grid))]
        n_queries.append(len(queries))
        previous = tokens.clone()
        at = [queries.index(j + 1) for j in masked]
        out = [br.logits(br.run(tokens, queries, f, full)[at]) for br in branches]
        logits = out[0] if len(out) == 1 else (1 + _guidance(d, t)) * out[0] - _guidance(d, t) * out[1]
        pos = torch.tensor([masked])
        u = noise.uniform(seed_t, t, pos, stream=0)[0]
        probs = torch.softmax(logits / d.temperature, dim=-1)
        cdf = probs.cumsum(-1)
        ids = torch.stack([torch.searchsorted(c, ui * c[-1]) for c, ui in zip(cdf, u)]).clamp(max=cfg.vocab_size - 1)
        logp = torch.log_softmax(logits, dim=-1).gather(1, ids[:, None])[:, 0]
        n_fix = counts[t] - counts[t + 1]
        if n_fix == len(masked):
            keep = range(len(masked))
        else:
            conf = logp + d.choice_temperature * (1 - (t + 1) / d.steps) * noise.gumbel(seed_t, t, pos, stream=1)[0]
            keep = conf.argsort(descending=True)[:n_fix].tolist()
        for i in keep:
            tokens[masked[i]] = ids[i]
    return tokens, n_queries


@pytest.fixture
def model(small_model_cfg):
    """A random model whose outputs depend strongly on context (weights far from the small
    training init), so that stale keys/values change sampled tokens."""
    torch.manual_seed(0)
    m = NestedTransformer(small_model_cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


LABELS, SEEDS = [0, 1, 2, 1, 0, 2], [3, 4, 5, 6, 7, 8]
POLICIES = ["none", "on_switch", "every:2", "on_switch+cls", "every:2+cls"]


def _decode_both(model, d, cond=None):
    got = decode(model, torch.tensor(LABELS), d, seeds=SEEDS, cond=cond)
    refs = [reference_decode(model, lab, s, d, [] if cond is None else cond[i].tolist())
            for i, (lab, s) in enumerate(zip(LABELS, SEEDS))]
    return got, torch.stack([r[0] for r in refs]), refs[0][1]


@pytest.mark.parametrize("cache", POLICIES)
@pytest.mark.parametrize("schedule, guidance", [("8x3,4x3,2x3,1x3", 0.0), ("1x12", 0.0), ("2x6,1x6", 2.0)])
def test_image_decode_matches_reference(model, schedule, guidance, cache):
    d = DecodeConfig(schedule=schedule, steps=12, cache=cache, guidance_scale=guidance,
                     guidance_schedule="linear")
    got, ref, n_queries = _decode_both(model, d)
    assert torch.equal(got.tokens, ref)
    assert (ref < model.cfg.vocab_size).all()
    assert [p.n_query for p in got.plan] == n_queries     # what the FLOP counter charges


@pytest.mark.parametrize("cache", POLICIES)
@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_frame_prediction_decode_matches_reference(model, cache, guidance):
    """Conditioning tokens (the given frame) sit in the grid; with `+cls` they are queries too."""
    torch.manual_seed(1)
    cond = torch.randint(0, model.cfg.vocab_size, (len(LABELS), 6))
    d = DecodeConfig(schedule="4x4,1x4", steps=8, cache=cache, guidance_scale=guidance)
    got, ref, n_queries = _decode_both(model, d, cond)
    assert torch.equal(got.tokens, ref)
    assert torch.equal(got.tokens[:, :6], cond)
    assert [p.n_query for p in got.plan] == n_queries


@pytest.mark.parametrize("schedule, steps, guidance, n_cond", [("1x12", 12, 0.0, 0), ("4x4,1x4", 8, 1.5, 6)])
def test_the_cache_rule_changes_tokens_on_this_model(model, schedule, steps, guidance, n_cond):
    """Guard against a comparison that passes by construction: on this model every cached
    policy decodes different tokens than no cache, and `+cls` differs from its base policy."""
    torch.manual_seed(1)
    cond = torch.randint(0, model.cfg.vocab_size, (len(LABELS), n_cond)) if n_cond else None
    out = {c: decode(model, torch.tensor(LABELS), DecodeConfig(schedule=schedule, steps=steps, cache=c,
                                                               guidance_scale=guidance),
                     seeds=SEEDS, cond=cond).tokens for c in POLICIES}
    for c in POLICIES[1:]:
        assert not torch.equal(out[c], out["none"]), c
    assert not torch.equal(out["on_switch"], out["on_switch+cls"])
    assert not torch.equal(out["every:2"], out["every:2+cls"])
