"""Streamed metric statistics (nestgen.metrics.sums) merge to the one-shot numbers; chunk
bootstrap counts and paired changes (nestgen.metrics.intervals); the claim check."""
import numpy as np
import pytest

from nestgen.evaluation.claim import claim_check
from nestgen.metrics.frame_error import frame_error_results
from nestgen.metrics.frechet import feature_stats, frechet_stats, frechet_sums
from nestgen.metrics.intervals import paired_change, resample_counts
from nestgen.metrics.sums import (accuracy, add, class_sums, contiguous_parts, frame_error_sums, inception_score,
                                  inception_sums, weighted)

RNG = np.random.default_rng(0)
CUTS = [0, 7, 8, 30, 61, 100]           # uneven chunks, one of a single sample


def _chunks(n: int):
    return [(a, z) for a, z in zip(CUTS, CUTS[1:]) if z <= n]


def test_frechet_sums_merge_to_the_one_shot_stats_and_resample_as_duplicates():
    x = RNG.normal(size=(100, 5)) * 1e-3 + 1e4        # offset: the shift keeps the sums well-conditioned
    shift = x[:3].mean(0)
    total = None
    rows = []
    for a, z in _chunks(100):
        s = frechet_sums(x[a:z], shift)
        total, rows = add(total, s), rows + [s]
    got, ref = frechet_stats(total, shift), feature_stats(x)
    assert got.n == 100
    np.testing.assert_allclose(got.mu, ref.mu, rtol=1e-13)
    np.testing.assert_allclose(got.sigma, ref.sigma, rtol=1e-6, atol=1e-14)
    # a bootstrap draw of chunks = the stats of the drawn chunks' samples, duplicates included
    stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    counts = np.array([2, 0, 1, 3, 1])
    dup = np.concatenate([x[a:z] for (a, z), c in zip(_chunks(100), counts) for _ in range(c)])
    drawn, direct = frechet_stats(weighted(stacked, counts), shift), feature_stats(dup)
    assert drawn.n == len(dup)
    np.testing.assert_allclose(drawn.mu, direct.mu, rtol=1e-13)
    np.testing.assert_allclose(drawn.sigma, direct.sigma, rtol=1e-6, atol=1e-14)


def test_class_sums_merge_to_the_accuracy():
    labels = np.arange(100) % 10
    pred = np.where(RNG.random(100) < 0.7, labels, (labels + 1) % 10)
    total = None
    for a, z in _chunks(100):
        total = add(total, class_sums(pred[a:z], labels[a:z], 10))
    value, per_class = accuracy(total)
    assert value == pytest.approx((pred == labels).mean())
    assert per_class["class_3"] == pytest.approx((pred[labels == 3] == 3).mean()) and len(per_class) == 10


def test_inception_sums_merge_to_the_split_score():
    logits = RNG.normal(size=(100, 8)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    total = None
    for a, z in _chunks(100):
        idx = np.arange(a, z)
        total = add(total, inception_sums(probs[a:z], contiguous_parts(idx, 100, 4), 4))
    # the splits are the contiguous runs [i*n//s, (i+1)*n//s)
    assert contiguous_parts(np.arange(10), 10, 4).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    scores = [np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean()) for p in np.split(probs, 4)]
    assert inception_score(total)[0] == pytest.approx(np.mean(scores), rel=1e-12)


def test_frame_error_sums_merge_to_the_one_shot_error():
    target = RNG.integers(0, 256, (30, 8, 6, 6), dtype=np.uint8)
    pred = np.clip(target.astype(int) + RNG.integers(-30, 30, target.shape), 0, 255).astype(np.uint8)
    pred[3] = target[3]                                   # a perfect clip: PSNR floored, not infinite
    total = None
    for a, z in _chunks(30):
        total = add(total, frame_error_sums(pred[a:z], target[a:z], 3))
    streamed, once = frame_error_results(total, 3, 8), frame_error_results(frame_error_sums(pred, target, 3), 3, 8)
    for k in once:
        assert streamed[k].value == pytest.approx(once[k].value, rel=1e-12)
        assert streamed[k].extra == pytest.approx(once[k].extra, rel=1e-12)
        assert streamed[k].protocol == once[k].protocol


def test_resample_counts_and_paired_change():
    w = resample_counts(7, 50, seed=3)
    assert w.shape == (50, 7) and (w.sum(1) == 7).all() and (w >= 0).all()
    assert np.array_equal(w, resample_counts(7, 50, seed=3)) and not np.array_equal(w, resample_counts(7, 50, 4))
    base = RNG.normal(10, 1, 50)
    up = paired_change(11.0, 10.0, base * 1.1, base)       # every replicate +10%: paired, no spread
    assert (up.value, up.lo, up.hi) == pytest.approx((0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="not paired"):
        paired_change(1.0, 1.0, base, base[:10])
    with pytest.raises(ValueError, match="at least 2 chunks"):
        resample_counts(1, 10)


def test_streamed_variants_share_their_draws_so_a_correlated_change_is_narrow():
    """Two variants streamed with one plan (as every variant of an evaluation is): each
    sample's score is mostly a per-request part both share (sd 1), and b is a's +5% plus
    noise of its own (sd 0.05). Their replicates come from the same chunk draws, so the
    change's interval carries only b's own noise; a reference unpaired bootstrap written
    here (each variant's chunks drawn independently) carries the shared part too and is
    over ten times wider. A stream that drew its own chunks per variant fails."""
    from nestgen.config import config_from_dict
    from nestgen.evaluation.quality import QualitySuite
    from nestgen.metrics.sums import StreamedMetric
    from nestgen.evaluation.stream import BatchStats, StreamPlan, VariantStream
    from nestgen.evaluation.variants import Variant, prepare_variant
    from nestgen.metrics.protocol import MetricResult
    n, chunks, reps = 400, 40, 1000
    rng = np.random.default_rng(5)
    shared = rng.normal(10, 1, n)
    scores = {"baseline": shared, "magnets": 1.05 * shared + rng.normal(0, 0.05, n)}
    suite = QualitySuite({"mean": StreamedMetric(None, lambda s, shape: [MetricResult("mean", s["sum"] / s["n"])])},
                         "mean")
    plan = StreamPlan(n, chunks, replicates=reps, seed=0)
    cfg = config_from_dict({"model": {"width": 32, "depth": 1}})
    chunk = plan.chunk_of(np.arange(n))
    rows, results = {}, {}
    for name, x in scores.items():
        rows[name] = np.array([[x[chunk == c].sum(), (chunk == c).sum()] for c in range(chunks)])
        stream = VariantStream(prepare_variant(cfg, Variant(name)), plan)
        for start in range(0, n, 100):             # four batches of 100 samples
            part = np.arange(start, start + 100)
            sums = {int(c): {"sum": x[part][chunk[part] == c].sum(), "n": float((chunk[part] == c).sum())}
                    for c in np.unique(chunk[part])}
            stream.add(BatchStats(start, 100, 0.0, {"mean": sums}, None, ()))
        results[name] = stream.result(suite)
    b, m = results["baseline"], results["magnets"]
    paired = paired_change(m.metrics["mean"], b.metrics["mean"], m.replicates["mean"], b.replicates["mean"])
    draw = np.random.default_rng(6)

    def unpaired_mean(r):
        w = np.bincount(draw.integers(0, chunks, chunks), minlength=chunks)
        return (w @ r)[0] / (w @ r)[1]
    unpaired = np.array([unpaired_mean(rows["magnets"]) / unpaired_mean(rows["baseline"]) - 1 for _ in range(reps)])
    unpaired_width = float(np.subtract(*np.quantile(unpaired, [0.975, 0.025])))
    assert paired.value == pytest.approx(scores["magnets"].mean() / shared.mean() - 1, rel=1e-12)
    assert paired.lo < paired.value < paired.hi and paired.lo < 0.05 < paired.hi
    assert paired.hi - paired.lo < unpaired_width / 10, (paired.hi - paired.lo, unpaired_width)


@pytest.mark.parametrize("change, lo, hi, lower_is_better, verdict", [
    (0.04, -0.01, 0.08, True, "yes"),
    (0.12, 0.11, 0.14, True, "no"),
    (0.06, 0.01, 0.13, True, "undecided"),
    (-0.30, -0.40, -0.20, True, "yes"),               # better than the baseline is within the claim
    (-0.04, -0.08, 0.01, False, "yes"),               # higher is better: only a drop counts
    (-0.12, -0.14, -0.11, False, "no"),
    (-0.06, -0.13, -0.01, False, "undecided"),
])
def test_claim_check(change, lo, hi, lower_is_better, verdict):
    c = claim_check(3.0, change, lo, hi, 0.10, lower_is_better)
    assert c.verdict == verdict
    assert c.line.startswith(f"GFLOPs saving 3.00x; quality change {100 * change:+.1f}% [")
    assert c.line.endswith(f"within 10%: {verdict}") and c.as_dict()["line"] == c.line


def test_claim_check_line_and_threshold():
    c = claim_check(2.98, 0.041, -0.012, 0.09)
    assert c.line == "GFLOPs saving 2.98x; quality change +4.1% [-1.2, +9.0]; within 10%: yes"
    assert claim_check(2.98, 0.041, -0.012, 0.09, threshold=0.05).verdict == "undecided"
    with pytest.raises(ValueError, match="empty"):
        claim_check(1.0, 0.0, 0.1, -0.1)
