import numpy as np
import pytest

from nestgen.metrics.intervals import paired_bootstrap


def test_identical_variants_give_a_zero_width_interval():
    """Pairing: both variants see the same resampled indices, so a variant equal to the
    reference has relative change exactly 0 in every replicate (unpaired draws would not)."""
    x = np.random.default_rng(0).normal(5, 1, 200)
    iv = paired_bootstrap(lambda idx: x[idx].mean() / x[idx].mean() - 1, len(x), replicates=200)
    assert iv.value == iv.lo == iv.hi == 0.0


def test_interval_covers_the_estimate_and_narrows_with_samples():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 800):
        a = rng.normal(10, 2, n)
        b = a * 1.1 + rng.normal(0, 0.5, n)        # paired: b is a changed by +10% plus noise
        iv = paired_bootstrap(lambda idx: b[idx].mean() / a[idx].mean() - 1, n, replicates=400, seed=3)
        assert iv.lo <= iv.value <= iv.hi
        assert iv.lo < 0.1 < iv.hi
        widths.append(iv.hi - iv.lo)
    assert widths[1] < widths[0] / 2
    again = paired_bootstrap(lambda idx: b[idx].mean() / a[idx].mean() - 1, 800, replicates=400, seed=3)
    assert again == iv


def test_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        paired_bootstrap(lambda idx: 0.0, 1)
