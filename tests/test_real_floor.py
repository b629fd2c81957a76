"""The real-data floor when the held-out rows are fewer than a variant's samples
(nestgen.evaluation.real): a digits-VQ-like case, 64-d features, 180 real rows against 2000
samples per variant (rows 1.4 to 2.8 times the feature dimensions, where a Fréchet distance
is not linear in 1/n). The "generator" draws from the real rows' own distribution, so the
truth is known: at matched counts the floor is the baseline's whole score."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from nestgen.evaluation.data import EvalData
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.real import RealDataResult, floor_against, real_row_count, score_real_data
from nestgen.evaluation.run import EvaluationReport
from nestgen.evaluation.stream import StreamPlan, VariantStream, reduce_batch
from nestgen.evaluation.variants import Variant, VariantResult, baseline_variant, prepare_variant
from nestgen.metrics.frechet import feature_stats, frechet_distance_stats, frechet_stats, frechet_sums
from nestgen.metrics.protocol import MetricResult
from nestgen.metrics.sums import StreamedMetric
from pipelines.config import run_config_from_dict

D, ROWS, SAMPLES = 64, 180, 2000


def _draws(seed: int = 0):
    """Draws of a 64-d Gaussian whose spectrum falls like a classifier's features' (a few
    strong directions): (draw(n, shift), the reference statistics of 1617 draws)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(D, D)))
    scales = 10 * np.exp(-np.arange(D) / 8.0)

    def draw(n: int, shift: float = 0.0) -> np.ndarray:
        return (rng.normal(size=(n, D)) * scales) @ basis.T + shift
    return draw, feature_stats(draw(1617))


def _case(interval_chunks: int = 50):
    draw, ref = _draws()
    fd = StreamedMetric(lambda chunk, device: frechet_sums(chunk.pixels, ref.mu),
                        lambda sums, shape: [MetricResult("fd_digits",
                                                          frechet_distance_stats(frechet_stats(sums, ref.mu), ref))])
    suite = QualitySuite({"fd_digits": fd}, "fd_digits", render=lambda rows: rows.numpy())
    rows = draw(ROWS)
    data = EvalData("image", torch.from_numpy(rows), torch.zeros(ROWS, dtype=torch.long), lambda: None,
                    [str(i) for i in range(10)], "the held-out split", "the training split")
    cfg = run_config_from_dict({"model": {"width": 32, "depth": 1},
                                "evaluate": {"num_samples": SAMPLES, "batch_size": 500, "bootstrap_replicates": 50,
                                             "interval_chunks": interval_chunks}})
    plan = StreamPlan(SAMPLES, interval_chunks, replicates=50, matched=real_row_count(cfg.evaluate, suite, data))

    def scored(v: Variant, x: np.ndarray) -> VariantResult:
        stream = VariantStream(prepare_variant(cfg, v), plan)
        for start in range(0, SAMPLES, 500):
            part = x[start:start + 500]
            stream.rows_from(reduce_batch(part, np.zeros(len(part)), None, start, plan, suite.features(), "cpu"),
                             (D,), len(part))
        return stream.result(suite)
    base = draw(SAMPLES)                                    # a perfect generator: the real rows' distribution
    results = [scored(baseline_variant(cfg), base), scored(Variant("magnets"), draw(SAMPLES, shift=0.3))]
    report = EvaluationReport(cfg, cfg.evaluate, results, suite, 1.0, None, real=score_real_data(cfg.evaluate, suite, data),
                              plan=plan)
    distance = lambda x: frechet_distance_stats(feature_stats(x), ref)       # noqa: E731
    return report, rows, base, distance


def test_the_floor_is_compared_with_the_baseline_at_the_real_rows_count():
    report, rows, base_x, distance = _case()
    real, (base, magnets) = report.real, report.results
    # the row reports what it measured, at its own count (the line in 1/n through its nested
    # subsets extrapolated it to 2000 samples: -0.94 here, below zero; the true value is near
    # the baseline's 1.7)
    assert real.num_samples == ROWS and real.metrics["fd_digits"] == pytest.approx(distance(rows), rel=1e-6)
    # each variant is read at the rows' count too: the mean over disjoint runs of its chunks
    # (40 samples each: runs of 160 and 200 samples, between them in 1/n), which agrees with
    # the mean over its 180-sample blocks
    blocks = np.mean([distance(base_x[i:i + ROWS]) for i in range(0, SAMPLES - ROWS + 1, ROWS)])
    assert base.at_rows["fd_digits"] == pytest.approx(blocks, rel=0.05)
    assert base.at_rows["fd_digits"] > 3 * base.metrics["fd_digits"]      # fewer samples: a larger distance
    floor = report.floor(magnets)
    # a perfect generator's score is all floor at matched counts ...
    assert floor.baseline_at_rows == base.at_rows["fd_digits"] and 0.8 < floor.share < 1.2
    # ... and carried to 2000 samples the floor is a distance near the baseline's, not below 0
    assert floor.value == pytest.approx(base.metrics["fd_digits"] - (floor.baseline_at_rows - floor.measured))
    assert 0 <= floor.value and abs(floor.value - base.metrics["fd_digits"]) < 0.5 * base.metrics["fd_digits"]
    # so the claim check reads the excess over it, whose denominator is the baseline's excess
    # at the rows' count
    claim = report.claims()[1]
    assert claim.reading == "excess" and claim.floor_share == floor.share and not claim.floor_note
    assert claim.excess == pytest.approx((magnets.metrics["fd_digits"] - base.metrics["fd_digits"])
                                         / (floor.baseline_at_rows - floor.measured))
    summary = report.summary()["floor"]
    assert summary["measured"] == real.metrics["fd_digits"] and summary["rows"] == ROWS
    assert summary["value"] == floor.value and summary["judged_on"] == "excess" and "not_comparable" not in summary
    assert f"the baseline at {ROWS} samples" in report.table()


def test_a_floor_that_cannot_be_matched_leaves_the_claim_on_the_plain_change():
    """Chunks of 400 samples: no count of the baseline's samples matches the 180 rows. The
    floor is then not comparable at the variants' count, and the claim check reads the plain
    change with the reason printed (no extrapolated floor stands in)."""
    report, rows, _, distance = _case(interval_chunks=5)
    magnets = report.results[1]
    floor = report.floor(magnets)
    assert floor.value is None and floor.share is None and "could not be read" in floor.reason
    assert report.real.metrics["fd_digits"] == pytest.approx(distance(rows), rel=1e-6)
    claim = report.claims()[1]
    assert claim.reading == "change" and claim.excess is None and claim.floor_note == floor.reason
    assert "real-data floor not comparable" in claim.line and "judged on the change" in claim.line
    summary = report.summary()
    assert summary["floor"]["value"] is None and summary["floor"]["not_comparable"] == floor.reason
    assert summary["floor"]["judged_on"] == "change"
    assert "excess_change_vs_baseline" not in summary["variants"][1]
    # over training seeds likewise: the change decides, and the lines and the table say why
    from nestgen.evaluation.seeds import aggregate_summaries, seed_claim_lines, seeds_table_markdown
    agg = aggregate_summaries({0: json.loads(json.dumps(summary)), 1: json.loads(json.dumps(summary))})
    assert agg["floor"]["judged_on"] == "change" and agg["floor"]["share_of_baseline"] is None
    [line] = seed_claim_lines(agg)
    assert "real-data floor not comparable (seed 0: the baseline's fd_digits could not be read" in line
    assert "The floor is not comparable at the variants' count" in seeds_table_markdown(agg)


def test_a_floor_that_is_no_floor_under_the_baseline_is_not_comparable():
    """Constructed numbers. Make demo's case: at 180 samples real data scores 36.1 and the
    baseline 15.5 (its samples are closer to the training split, the reference, than held-out
    digits): no floor under the baseline, whose excess over it would be 0 (any variant below
    30.3 "no change"). And a floor that carried to the variants' count would be negative
    (the baseline's excess at the rows' count exceeds its whole score there). Both: not
    comparable, the share still reported."""
    def floor(measured, at_rows, q):
        real = RealDataResult("real data", "held-out", ROWS, {"fd_digits": measured}, {})
        base = VariantResult(Variant("1x12"), "1x12", 1.0, 0.0, {"fd_digits": q}, at_rows={"fd_digits": at_rows})
        return floor_against(real, "fd_digits", base, SAMPLES)
    demo = floor(36.12, 15.50, 9.67)
    assert demo.value is None and "set no floor under this baseline" in demo.reason
    assert demo.share == pytest.approx(36.12 / 15.50)
    negative = floor(20.0, 30.0, 5.0)
    assert negative.value is None and "cannot be carried" in negative.reason
    sane = floor(20.0, 30.0, 12.0)
    assert sane.value == pytest.approx(2.0) and sane.share == pytest.approx(20 / 30) and not sane.reason
    # at equal counts the floor is the row's own value, and one at or above the baseline is no floor either
    real = RealDataResult("real data", "held-out", SAMPLES, {"fd_digits": 12.0}, {})
    base = VariantResult(Variant("1x12"), "1x12", 1.0, 0.0, {"fd_digits": 10.0})
    assert floor_against(real, "fd_digits", base, SAMPLES).value is None
    assert floor_against(real, "fd_digits", replace(base, metrics={"fd_digits": 40.0}), SAMPLES).value == 12.0
