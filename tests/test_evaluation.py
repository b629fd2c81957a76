"""Quality against compute: variants, digits quality metrics, Pareto front."""
import pytest
import torch

from nestgen.config import config_from_dict
from nestgen.data.digits import load_digit_tokens
from nestgen.evaluation import Variant, digits_quality, evaluate_variants, pareto_front, results_table
from nestgen.model.nested_transformer import NestedTransformer


def test_pareto_front():
    g = [5.0, 1.0, 2.0, 2.0, 4.0]
    q = [1.0, 3.0, 2.0, 2.5, 1.0]          # lower is better
    assert pareto_front(g, q) == [False, True, True, False, True]
    assert pareto_front(g, [-x for x in q], lower_is_better=False) == [False, True, True, False, True]


@pytest.fixture(scope="module")
def quality():
    return digits_quality(epochs=8)


def test_digits_quality_separates_real_from_noise(quality):
    (_, _), (held_t, held_y) = load_digit_tokens(0.1, 0)
    (train_t, train_y), _ = load_digit_tokens(0.1, 0)
    real = quality(train_t[:300], train_y[:300])
    noise = quality(torch.randint(0, 17, (300, 64), generator=torch.Generator().manual_seed(0)), train_y[:300])
    assert real["digits_accuracy"] > 0.9 and noise["digits_accuracy"] < 0.4
    assert real["fd_digits"] * 5 < noise["fd_digits"]


def test_evaluate_variants_same_seeds_and_flops_order(quality):
    cfg = config_from_dict({"model": {"width": 64, "depth": 1}})
    torch.manual_seed(0)
    model = NestedTransformer(cfg.model).eval()
    vs = [Variant("baseline"), Variant("magnets"), Variant("magnets", "on_switch"), Variant("baseline")]
    res = evaluate_variants(model, cfg, vs, num_samples=40, quality=quality, batch_size=16, keep_tokens=True)
    assert [r.schedule for r in res] == ["1x12", "8x3,4x3,2x3,1x3", "8x3,4x3,2x3,1x3", "1x12"]
    assert res[0].gflops_per_sample > res[1].gflops_per_sample > res[2].gflops_per_sample
    assert torch.equal(res[0].tokens, res[3].tokens) and res[0].metrics == res[3].metrics
    assert all(r.seconds_per_sample > 0 and set(r.metrics) == {"fd_digits", "digits_accuracy"} for r in res)
    table = results_table(res, "fd_digits")
    assert "8x3,4x3,2x3,1x3 cache=on_switch" in table or "magnets cache=on_switch" in table
