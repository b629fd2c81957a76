"""A nested sub-model must be exactly a dense transformer whose weights are the slices."""
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nestgen.model.nested_transformer import KVCache, NestedTransformer


def _split_qkv(t: torch.Tensor, heads: int):
    """The fused head-interleaved [q_h; k_h; v_h] rows -> plain Wq, Wk, Wv (head-major rows)."""
    per_head = t.view(heads, 3, -1, *t.shape[1:])
    return tuple(per_head[:, j].reshape(-1, *t.shape[1:]) for j in range(3))


def _dense_reference(model: NestedTransformer, factor: int):
    """torch's own pre-norm encoder layers of width D/f, weights *copied* from the slices."""
    cfg = model.cfg
    w, h = cfg.width // factor, cfg.heads // factor
    layers = []
    for blk in model.blocks:
        layer = nn.TransformerEncoderLayer(w, h, dim_feedforward=cfg.mlp_ratio * w, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        a = blk.attn
        with torch.no_grad():
            wq, wk, wv = _split_qkv(a.qkv.weight, cfg.heads)
            bq, bk, bv = _split_qkv(a.qkv.bias, cfg.heads)
            layer.self_attn.in_proj_weight.copy_(torch.cat([m[:w, :w] for m in (wq, wk, wv)]))
            layer.self_attn.in_proj_bias.copy_(torch.cat([m[:w] for m in (bq, bk, bv)]))
            layer.self_attn.out_proj.weight.copy_(a.o.weight[:w, :w])
            layer.self_attn.out_proj.bias.copy_(a.o.bias[:w])
            layer.linear1.weight.copy_(blk.mlp.fc1.weight[: 4 * w, :w])
            layer.linear1.bias.copy_(blk.mlp.fc1.bias[: 4 * w])
            layer.linear2.weight.copy_(blk.mlp.fc2.weight[:w, : 4 * w])
            layer.linear2.bias.copy_(blk.mlp.fc2.bias[:w])
            for src, dst in ((blk.ln1, layer.norm1), (blk.ln2, layer.norm2)):
                dst.weight.copy_(src.weight[:w])
                dst.bias.copy_(src.bias[:w])
        layers.append(layer.eval())
    tok = model.tok_emb.weight[:, :w].detach().clone()
    cls = model.cls_emb.weight[:, :w].detach().clone()
    pos = model.pos_emb[:, :w].detach().clone()
    lnf = nn.LayerNorm(w)
    with torch.no_grad():
        lnf.weight.copy_(model.ln_f.weight[:w])
        lnf.bias.copy_(model.ln_f.bias[:w])
    head_w = (model.head.weight if model.head is not None else model.tok_emb.weight[: cfg.vocab_size])
    head_w = head_w[:, :w].detach().clone()
    head_b = model.head_bias.detach().clone()

    def forward(tokens, labels):
        x = torch.cat([cls[labels][:, None], tok[tokens]], 1) + pos
        for layer in layers:
            x = layer(x)
        return F.linear(lnf(x[:, 1:]), head_w, head_b)
    return forward


def _randomize(model):
    # Non-trivial norms and biases so that a wrong slice cannot hide behind ones and zeros.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("output_head", ["tied", "separate"])
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_sub_model_equals_dense_transformer_of_its_slices(small_model_cfg, factor, output_head):
    cfg = dataclasses.replace(small_model_cfg, output_head=output_head)
    torch.manual_seed(0)
    model = NestedTransformer(cfg).eval()
    _randomize(model)
    tokens = torch.randint(0, cfg.vocab_size + 1, (3, cfg.num_tokens))
    labels = torch.tensor([0, 2, cfg.num_classes])
    with torch.no_grad():
        ours = model(tokens, labels, factor)
        ref = _dense_reference(model, factor)(tokens, labels)
    assert ours.shape == (3, cfg.num_tokens, cfg.vocab_size)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_full_width_attention_variant(small_model_cfg):
    """Residual stream and MLP sliced to D/f, attention at full width D (all heads); unlike
    MoNE, the MLP hidden layer stays at R*D/f."""
    cfg = dataclasses.replace(small_model_cfg, attention_width="full", depth=1)
    torch.manual_seed(1)
    model = NestedTransformer(cfg).eval()
    _randomize(model)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.num_tokens))
    labels = torch.tensor([1, 2])
    f, d = 4, cfg.width
    w = d // f
    with torch.no_grad():
        ours = model(tokens, labels, f)
        x = torch.cat([model.cls_emb.weight[labels, None, :w], model.tok_emb.weight[tokens, :w]], 1)
        x = x + model.pos_emb[:, :w]
        b = model.blocks[0]
        hin = F.layer_norm(x, (w,), b.ln1.weight[:w], b.ln1.bias[:w])
        wq, wk, wv = _split_qkv(b.attn.qkv.weight, cfg.heads)
        bq, bk, bv = _split_qkv(b.attn.qkv.bias, cfg.heads)
        q, k, v = (hin @ wm[:, :w].T + bm for wm, bm in ((wq, bq), (wk, bk), (wv, bv)))
        split = lambda t: t.view(2, -1, cfg.heads, d // cfg.heads).transpose(1, 2)
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (d // cfg.heads) ** 0.5, -1) @ split(v)
        att = att.transpose(1, 2).reshape(2, -1, d)
        x = x + att @ b.attn.o.weight[:w, :].T + b.attn.o.bias[:w]
        hin = F.layer_norm(x, (w,), b.ln2.weight[:w], b.ln2.bias[:w])
        x = x + F.gelu(hin @ b.mlp.fc1.weight[: 4 * w, :w].T + b.mlp.fc1.bias[: 4 * w]) \
            @ b.mlp.fc2.weight[:w, : 4 * w].T + b.mlp.fc2.bias[:w]
        x = F.layer_norm(x[:, 1:], (w,), model.ln_f.weight[:w], model.ln_f.bias[:w])
        ref = x @ model.tok_emb.weight[: cfg.vocab_size, :w].T + model.head_bias
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_parameter_count_does_not_grow_with_nested_sizes(small_model_cfg):
    one = NestedTransformer(dataclasses.replace(small_model_cfg, nest_factors=[1]))
    four = NestedTransformer(small_model_cfg)
    assert one.num_params() == four.num_params()
    names = {n for n, _ in four.named_parameters()}
    assert names == {n for n, _ in one.named_parameters()}


def test_sub_model_reads_views_only_its_slice_gets_gradients(small_model_cfg):
    model = NestedTransformer(small_model_cfg)
    tokens = torch.randint(0, small_model_cfg.vocab_size, (2, small_model_cfg.num_tokens))
    model(tokens, torch.tensor([0, 1]), 8).sum().backward()
    w = small_model_cfg.width // 8
    g = model.blocks[0].mlp.fc1.weight.grad
    assert g[: 4 * w, :w].abs().sum() > 0
    assert g[4 * w:].abs().sum() == 0 and g[:, w:].abs().sum() == 0
    assert model.tok_emb.weight.grad[:, w:].abs().sum() == 0


def test_unknown_factor_is_rejected(small_model_cfg):
    model = NestedTransformer(small_model_cfg)
    with pytest.raises(ValueError, match="nest factor 3"):
        model(torch.zeros(1, small_model_cfg.num_tokens, dtype=torch.long), torch.tensor([0]), 3)


@pytest.mark.parametrize("attention_width", ["nested", "full"])
def test_cached_pass_is_exact_when_nothing_changed(small_model_cfg, attention_width):
    """After a full pass fills the cache, running any subset of positions as queries
    reproduces the full pass's logits there: the cache machinery itself is exact."""
    cfg = dataclasses.replace(small_model_cfg, attention_width=attention_width)
    torch.manual_seed(2)
    model = NestedTransformer(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size + 1, (2, cfg.num_tokens))
    labels = torch.tensor([0, 1])
    pos = torch.stack([torch.randperm(cfg.num_tokens)[:5] for _ in range(2)])
    for f in (1, 4):
        cache = KVCache()
        with torch.no_grad():
            full = model(tokens, labels, f, cache=cache)
            part = model.forward_active(tokens, pos, f, cache)
            with_cls = model.forward_active(tokens, pos, f, cache, labels=labels)
        expected = full.gather(1, pos[..., None].expand(-1, -1, full.shape[-1]))
        torch.testing.assert_close(part, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(with_cls, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="a full pass must refresh it first"):
        model.forward_active(tokens, pos, 1, cache)


def test_cached_pass_with_class_token_and_every_position_is_a_full_pass(small_model_cfg):
    """With the class token and all grid positions as queries every K/V is recomputed, so a
    cached pass with new labels equals a full pass with those labels: the class token's K/V
    are refreshed, not reused."""
    torch.manual_seed(3)
    model = NestedTransformer(small_model_cfg).eval()
    tokens = torch.randint(0, small_model_cfg.vocab_size + 1, (2, small_model_cfg.num_tokens))
    everything = torch.arange(small_model_cfg.num_tokens).expand(2, -1)
    cache = KVCache()
    with torch.no_grad():
        model(tokens, torch.tensor([0, 0]), 2, cache=cache)
        fresh = model(tokens, torch.tensor([1, 2]), 2)
        stale = model.forward_active(tokens, everything, 2, cache)     # class K/V from labels 0
        cls = model.forward_active(tokens, everything, 2, cache, labels=torch.tensor([1, 2]))
    torch.testing.assert_close(cls, fresh, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stale, fresh, atol=1e-3)
