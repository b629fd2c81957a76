import numpy as np
import pytest

from nestgen.metrics.intervals import paired_bootstrap


def test_a_paired_change_is_far_narrower_than_an_unpaired_one():
    """Two strongly correlated variants: each sample's score is mostly a per-request part
    (sd 1) both share, and b is a's +5% plus noise of its own (sd 0.05). Pairing (one set of
    indices for both) leaves only b's own noise in the change: its 95% width is about
    2 * 1.96 * 0.05 / (10 * sqrt(n)) = 0.001. An unpaired bootstrap (each variant's samples
    drawn independently, written out here as the reference) also carries the shared part,
    ~0.03 wide. A paired_bootstrap whose draws are no resample (a permutation: width 0) or
    a fixed index set fails the lower bound; an unpaired one fails the upper."""
    n, reps = 400, 1000
    rng = np.random.default_rng(2)
    shared = rng.normal(10, 1, n)
    a, b = shared, 1.05 * shared + rng.normal(0, 0.05, n)
    paired = paired_bootstrap(lambda idx: b[idx].mean() / a[idx].mean() - 1, n, replicates=reps, seed=3)
    draw = np.random.default_rng(4)
    unpaired = np.array([b[draw.integers(0, n, n)].mean() / a[draw.integers(0, n, n)].mean() - 1
                         for _ in range(reps)])
    unpaired_width = float(np.subtract(*np.quantile(unpaired, [0.975, 0.025])))
    paired_width = paired.hi - paired.lo
    assert paired.lo < paired.value < paired.hi and paired.lo < 0.05 < paired.hi
    assert paired_width < unpaired_width / 2, (paired_width, unpaired_width)
    expected = 2 * 1.96 * 0.05 / (10 * np.sqrt(n))
    assert 0.7 * expected < paired_width < 1.4 * expected, (paired_width, expected)


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
