"""Decode-aware nested training: each smaller size's loss weighted towards the mask ratios its
decode schedules run it at (nestgen.training.decode_aware)."""
import math

import pytest
import torch
import torch.nn.functional as F

from nestgen.config import ConfigError, config_from_dict
from nestgen.masking import decode_mask_counts, random_training_mask
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.training.decode_aware import ratio_bin, decode_aware_weights, training_bin_probabilities
from nestgen.training.objective import drop_labels, nested_loss

FACTORS = [1, 2, 4, 8]


def test_the_training_bins_are_the_cosine_masks_distribution():
    u = torch.rand(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = torch.bincount(ratio_bin(torch.cos(math.pi / 2 * u)), minlength=20).double() / u.numel()
    assert torch.allclose(seen, training_bin_probabilities(), atol=2e-3)
    assert training_bin_probabilities()[-1] == pytest.approx(2 / math.pi * math.acos(0.95))   # ~0.20


def test_d8_under_magnets_is_weighted_onto_its_band_only():
    w = decode_aware_weights(1.0, ["magnets"], FACTORS, 64, 0)
    counts = decode_mask_counts(64, 12)
    band_lo = counts[3] / 64                          # D/8 runs steps 0-2: from 100% masked down to r_3
    ratios = torch.linspace(0, 1, 201)
    d8 = w(8, ratios)
    assert (d8[ratios < band_lo - 0.05] == 0).all() and (d8[ratios >= 0.95] > 3).all()
    assert w(1, ratios) is None                       # the full model keeps plain means
    # an importance weight: its mean over the training masks is 1 for every size and strength
    p = training_bin_probabilities().float()
    for strength in (1.0, 0.3):
        ws = decode_aware_weights(strength, ["magnets"], FACTORS, 64, 0)
        for f in (2, 4, 8):
            assert float((ws.table[f] * p).sum()) == pytest.approx(1.0, rel=1e-5)
    # D/2 runs the middle: none of its weight at the first (fully masked) ratios
    assert float(w(2, torch.tensor([1.0]))) == 0.0 and float(w(2, torch.tensor([0.4]))) > 1.0


def test_the_reversed_ablation_and_foreign_schedules_do_not_shape_training():
    served = decode_aware_weights(1.0, ["magnets", "baseline"], FACTORS, 64, 0)
    listed = decode_aware_weights(1.0, ["magnets", "baseline", "large-first", "16x12"], FACTORS, 64, 0)
    assert all(torch.equal(served.table[f], listed.table[f]) for f in served.table)
    assert decode_aware_weights(0.0, ["magnets"], FACTORS, 64, 0) is None


def _model_and_batch():
    cfg = config_from_dict({"model": {"vocab_size": 11, "grid": [4, 4], "num_classes": 3, "width": 32,
                                      "depth": 1, "heads": 8}, "train": {"class_dropout": 0.0}})
    torch.manual_seed(0)
    model = NestedTransformer(cfg.model)
    tokens = torch.randint(0, 11, (64, 16), generator=torch.Generator().manual_seed(1))
    return cfg, model, tokens, torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(2))


def test_each_smaller_size_loss_is_the_ratio_weighted_mean_of_its_token_losses():
    cfg, model, tokens, labels = _model_and_batch()
    weights = decode_aware_weights(1.0, ["magnets"], FACTORS, 16, 0)
    out = nested_loss(model, tokens, labels, cfg.train, 0, FACTORS, torch.Generator().manual_seed(5), weights)
    plain = nested_loss(model, tokens, labels, cfg.train, 0, FACTORS, torch.Generator().manual_seed(5))
    # the same draws as inside nested_loss: masks first, then label dropout
    gen = torch.Generator().manual_seed(5)
    mask = random_training_mask(64, 16, 0, gen)
    inputs = torch.where(mask, torch.full_like(tokens, model.cfg.mask_id), tokens)
    labels_in = drop_labels(labels, model.cfg.null_class, cfg.train.class_dropout, gen)
    ratio = mask.sum(1) / 16
    rows = mask.nonzero()[:, 0]
    with torch.no_grad():
        for f in (2, 4, 8):
            ce = F.cross_entropy(model(inputs, labels_in, f)[mask].float(), tokens[mask],
                                 label_smoothing=cfg.train.label_smoothing, reduction="none")
            w = weights(f, ratio)[rows]
            assert float(out.per_size[f]) == pytest.approx(float((w * ce).sum() / w.sum()), rel=1e-5)
            assert float(plain.per_size[f]) == pytest.approx(float(ce.mean()), rel=1e-5)
            assert abs(float(out.per_size[f]) - float(plain.per_size[f])) > 1e-4   # the weighting does move it
    assert float(out.per_size[1]) == pytest.approx(float(plain.per_size[1]), rel=1e-6)


def test_chunked_loss_gives_the_same_weighted_loss_and_gradients():
    cfg, model, tokens, labels = _model_and_batch()
    weights = decode_aware_weights(0.7, ["magnets"], FACTORS, 16, 0)
    grads = []
    for chunk in (0, 37):
        cfg.train.loss_chunk = chunk
        model.zero_grad()
        out = nested_loss(model, tokens, labels, cfg.train, 10, FACTORS, torch.Generator().manual_seed(3), weights)
        out.total.backward()
        grads.append((float(out.total.detach()), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


def test_decode_aware_is_validated_and_off_by_default():
    assert config_from_dict({}).train.decode_aware == 0.0
    with pytest.raises(ConfigError, match="decode_aware"):
        config_from_dict({"train": {"decode_aware": 1.5}})
