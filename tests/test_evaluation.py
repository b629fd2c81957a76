"""Quality against compute: variants, streamed quality suites, intervals, claim checks, schedule
search, Pareto front, outputs."""
import hashlib
import json
import tracemalloc

import numpy as np
import pytest
import torch

from nestgen.data.digits import load_digit_tokens
from nestgen.evaluation import (METRICS, BatchStats, EvalData, StreamPlan, Variant, build_quality_suite,
                                class_requests, eval_requests, load_eval_data, local_map, lower_is_better,
                                pareto_front, prepare_variant, run_evaluation, step_splits, stream_variants)
from nestgen.evaluation.quality import requested_metrics
from nestgen.evaluation.search import pick_candidates
from nestgen.evaluation.variants import VariantResult, variant_gflops
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.render import tokens_to_pixels
from nestgen.tokenizers import TokenizerConfig, VQTokenizer
from pipelines.config import run_config_from_dict


def test_pareto_front():
    g = [5.0, 1.0, 2.0, 2.0, 4.0]
    q = [1.0, 3.0, 2.0, 2.5, 1.0]          # lower is better
    assert pareto_front(g, q) == [False, True, True, False, True]
    assert pareto_front(g, [-x for x in q], lower_is_better=False) == [False, True, True, False, True]


def _cfg(**evaluate):
    return run_config_from_dict({"model": {"width": 32, "depth": 1},
                                 "evaluate": {"num_samples": 60, "batch_size": 25, **evaluate}})


def _sample(model, cfg, suite, variants, requests, plan, tok=None):
    """Every variant over the requests, as one pass of run_evaluation, in this process."""
    return stream_variants(suite, [prepare_variant(cfg, v) for v in variants], requests, plan,
                           cfg.evaluate.batch_size, local_map(model, cfg, suite, tok), bar=False)


@pytest.fixture(scope="module")
def digits_suite():
    cfg = _cfg()
    data = load_eval_data(cfg)
    return build_quality_suite(cfg, cfg.evaluate, data, lambda t: tokens_to_pixels(t, cfg.model.grid), "cpu"), data


def test_digits_suite_separates_real_from_noise(digits_suite):
    suite, data = digits_suite
    assert suite.primary == "fd_digits" and set(suite.scorers) == {"fd_digits", "digits_accuracy"}
    # FID/IS are asked for by `auto` but raw 8x8 levels have no Inception reference: said, not reported
    assert {"fid", "is"} <= set(suite.unavailable)
    real_t, real_y = data.train_tokens[:300], data.train_labels[:300]
    noise_t = torch.randint(0, 17, (300, 64), generator=torch.Generator().manual_seed(0))
    req = class_requests(10, 300, 0)
    req.labels = real_y
    real = suite.score(tokens_to_pixels(real_t, [8, 8]), req.labels.numpy())
    noise = suite.score(tokens_to_pixels(noise_t, [8, 8]), req.labels.numpy())
    assert real["digits_accuracy"] > 0.9 and noise["digits_accuracy"] < 0.4
    assert real["fd_digits"] * 5 < noise["fd_digits"]


def test_variants_share_requests_and_flops_order(digits_suite):
    suite, _ = digits_suite
    cfg = _cfg(bootstrap_replicates=50, interval_chunks=12)
    torch.manual_seed(0)
    model = NestedTransformer(cfg.model).eval()
    plan = StreamPlan(60, 12, grid=30, replicates=50)
    vs = [Variant("baseline"), Variant("magnets"), Variant("magnets", "on_switch"), Variant("baseline")]
    res = _sample(model, cfg, suite, vs, class_requests(10, 60, 7), plan)
    assert [r.schedule for r in res] == ["1x12", "8x3,4x3,2x3,1x3", "8x3,4x3,2x3,1x3", "1x12"]
    assert res[0].gflops_per_sample > res[1].gflops_per_sample > res[2].gflops_per_sample
    # the same requests give the same samples: identical grids, statistics and bootstrap replicates
    assert np.array_equal(res[0].grid, res[3].grid) and res[0].metrics == res[3].metrics
    assert all(np.array_equal(res[0].replicates[k], res[3].replicates[k]) for k in res[0].metrics)
    assert all(r.seconds_per_sample > 0 and r.grid.shape == (30, 8, 8) for r in res)
    assert set(res[0].replicates) == {"fd_digits", "digits_accuracy"} and len(res[0].replicates["fd_digits"]) == 50
    # batching does not change samples: batch 25 above vs one batch of 60 here. The metric
    # nets then run float32 on other batch shapes and the chunk sums add up in another
    # order, so the statistics agree to rounding (a BLAS kernel may round batches differently).
    cfg.evaluate.batch_size = 60
    [again] = _sample(model, cfg, suite, [Variant("magnets", "on_switch")], class_requests(10, 60, 7), plan)
    assert np.array_equal(again.grid, res[2].grid)
    assert again.metrics == pytest.approx(res[2].metrics, rel=1e-5)
    np.testing.assert_allclose(again.replicates["fd_digits"], res[2].replicates["fd_digits"], rtol=1e-5)


def test_a_schedule_string_is_parsed_once_per_variant_and_its_plan_is_what_decodes(digits_suite, monkeypatch):
    """run_evaluation hands its batch jobs to the map it is given, and each variant's schedule
    string is parsed once per evaluation however many batches it has: the jobs carry the
    prepared decode (the parsed schedule, the step plan) that the worker decodes and the
    variant's GFLOPs were counted on. (The decoder used to parse it again for every batch, and
    the FLOP count twice more per variant.)"""
    from nestgen.decoding import schedule, worker
    from nestgen.flops import plan_flops
    suite, data = digits_suite
    cfg = _cfg(num_samples=30, batch_size=10, schedules=["magnets", "magnets-lite"], caches=["none"],
               search={"enabled": False}, bootstrap_replicates=0, interval_chunks=3)
    parsed, decoded, jobs = [], [], []
    parse, decode = schedule.parse_schedule, worker.decode
    monkeypatch.setattr(schedule, "parse_schedule", lambda text, *a, **kw: parsed.append(text) or parse(text, *a, **kw))
    monkeypatch.setattr(worker, "decode", lambda *a, **kw: decoded.append(kw["prep"]) or decode(*a, **kw))
    local = local_map(NestedTransformer(cfg.model).eval(), cfg, suite)

    def map_batches(batch_jobs):
        jobs.extend(batch_jobs)
        return local(batch_jobs)
    report = run_evaluation(cfg, cfg.evaluate, suite, data, map_batches, progress=lambda s: None, bar=False)
    assert [(j.variant.variant.schedule, j.start) for j in jobs] == [(s, i) for s in ("magnets", "magnets-lite")
                                                                      for i in (0, 10, 20)]
    assert parsed.count("8x3,4x3,2x3,1x3") == 1 and parsed.count("8x4,4x4,2x2,1x2") == 1
    preps = [j.variant.prep for j in jobs]
    assert decoded and all(any(p is q for q in preps) for p in decoded)     # warm-ups included
    for r, j in zip(report.results, jobs[::3]):
        assert r.schedule == str(j.variant.prep.schedule)
        assert r.gflops_per_sample == plan_flops(cfg.model, j.variant.prep, False).gflops


def test_driver_memory_does_not_grow_with_samples(digits_suite):
    """What the driver holds while merging is fixed by the chunks, the grid and the
    replicates, not by the samples: peak traced memory at 4x the samples is within 10%.
    Samples are rendered to 64x64 RGB by a (random) VQ tokenizer, so keeping them would
    add 12 KB per sample, far above the margin (asserted too)."""
    suite, data = digits_suite
    tok = VQTokenizer(TokenizerConfig(kind="image", channels=3, image_size=64, base_width=8, max_width=16,
                                      downsample=8, codebook_size=17, code_dim=8)).eval()
    model = NestedTransformer(_cfg().model).eval()

    def peak(n: int) -> int:
        cfg = _cfg(num_samples=n, batch_size=50, schedules=["magnets"], caches=["on_switch"], grid_samples=20,
                   search={"enabled": False}, bootstrap_replicates=20, interval_chunks=10)
        map_batches = local_map(model, cfg, suite, tok)
        tracemalloc.start()
        try:
            report = run_evaluation(cfg, cfg.evaluate, suite, data, map_batches, progress=lambda s: None, bar=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert report.results[0].grid.shape == (20, 64, 64, 3)
        return peak

    peak(50)                                            # first-use allocations out of the way
    small, large = peak(100), peak(400)
    margin = 0.1 * small + 64 * 1024
    assert large <= small + margin, (small, large)
    assert 300 * 64 * 64 * 3 > 10 * margin               # holding the 300 extra samples could not pass


@pytest.mark.filterwarnings("ignore:`torch.jit.*:DeprecationWarning")      # the I3D file is TorchScript
def test_a_video_variant_keeping_no_grid_samples_still_gets_its_frame_metrics(fake_i3d_file, monkeypatch):
    """The schedule search's candidates keep no grid samples (StreamPlan grid 0): FVD and the
    frame-prediction error still learn the clips' frame count from the streamed batches."""
    monkeypatch.setenv("NESTGEN_I3D_PATH", str(fake_i3d_file))
    monkeypatch.setenv("NESTGEN_I3D_SHA256", hashlib.sha256(fake_i3d_file.read_bytes()).hexdigest())
    tok = VQTokenizer(TokenizerConfig(kind="video", channels=1, image_size=8, frames=4, downsample=4,
                                      temporal_downsample=2, base_width=8, max_width=8, codebook_size=17,
                                      code_dim=8)).eval()          # clips of 4 frames <-> tokens [2, 2, 2]
    cfg = run_config_from_dict({"model": {"vocab_size": 17, "grid": [2, 2, 2], "width": 32, "depth": 1},
                                "train": {"cond_tokens": 4},           # the first latent frame is given
                                "data": {"source": "shards", "url": "memory://held-out"},
                                "evaluate": {"num_samples": 6, "batch_size": 3, "metrics": ["fvd", "frame_pred"]}})
    held_out = torch.randint(0, 17, (6, 8), generator=torch.Generator().manual_seed(0))
    data = EvalData("video", held_out, torch.arange(6) % 10, lambda: (held_out, torch.arange(6) % 10),
                    [str(i) for i in range(10)], "random clips")
    suite = build_quality_suite(cfg, cfg.evaluate, data, lambda t: tokens_to_pixels(t, cfg.model.grid, tok), "cpu")
    assert set(suite.scorers) == {"fvd", "frame_pred"}, suite.unavailable
    torch.manual_seed(0)
    [res] = _sample(NestedTransformer(cfg.model).eval(), cfg, suite, [Variant("magnets")],
                    eval_requests(cfg, data, 6, 0), StreamPlan(6, 2), tok)
    assert res.grid is None
    assert {"fvd", "frame_pred_mse", "frame_pred_psnr"} <= set(res.metrics)
    assert suite.protocols["fvd"]["num_frames"] == 4 and suite.protocols["fvd"]["clip_shapes_thw"] == [[4, 8, 8]]
    assert suite.protocols["frame_pred_mse"]["predicted_frames"] == 2       # 4 frames, 2 given


def _frame_prediction_cfg(**evaluate):
    return run_config_from_dict({"model": {"vocab_size": 17, "grid": [2, 2, 2], "width": 32, "depth": 1},
                                 "train": {"cond_tokens": 4}, "data": {"source": "shards", "url": "memory://held-out"},
                                 "evaluate": {"num_samples": 40, "interval_chunks": 8, "bootstrap_replicates": 10,
                                              "schedules": ["baseline"], "caches": ["none"],
                                              "search": {"num_samples": 20, "max_candidates": 2, "budget_fraction": 0.5},
                                              **evaluate}})


def test_the_search_is_held_out_and_the_bootstrap_resamples_whole_clips():
    """Frame prediction: the schedule search conditions on held-out clips and uses seeds that
    the final evaluation never sends (it used to condition both on the same clips), and the
    final evaluation, which repeats each of its clips under other seeds, resamples whole
    clips: every sample conditioned on one clip falls in the same bootstrap chunk (contiguous
    chunks of samples used to split a clip's samples over chunks, counted as independent)."""
    from nestgen.evaluation.quality import QualitySuite
    from nestgen.metrics.protocol import MetricResult
    from nestgen.metrics.sums import StreamedMetric
    clips = 15
    held_out = torch.stack([torch.tensor([i // 4, i % 4, i % 3, 7] + [0] * 4) for i in range(clips)])  # own first frames
    data = EvalData("video", held_out, torch.arange(clips) % 10, lambda: (held_out, torch.arange(clips) % 10),
                    [str(i) for i in range(10)], "15 clips")
    # no model: every batch "scores" its first sample's index, so any variant's value is 0
    suite = QualitySuite({"fvd": StreamedMetric(None, lambda s, shape: [MetricResult("fvd", float(s["v"]))])}, "fvd")
    calls = []

    def map_batches(jobs):
        calls.append(jobs)
        return [BatchStats(j.start, len(j.requests), 0.0, {"fvd": {0: {"v": np.float64(j.start)}}}, None, ())
                for j in jobs]

    cfg = _frame_prediction_cfg()
    run_evaluation(cfg, cfg.evaluate, suite, data, map_batches, progress=lambda s: None, bar=False)
    search_jobs, final_jobs = calls
    search, final, plan = search_jobs[0].requests, final_jobs[0].requests, final_jobs[0].plan
    assert [len(jobs) for jobs in calls] == [2, 2]     # one batch (evaluate.batch_size 250) per variant

    def clip_of(req):
        return [tuple(row.tolist()) for row in req.cond]
    assert set(clip_of(search)).isdisjoint(clip_of(final)) and set(search.seeds).isdisjoint(final.seeds)
    assert len(set(clip_of(search))) + len(set(clip_of(final))) == clips           # a split of the held-out clips
    assert len(set(clip_of(search))) == 5                                          # 20 of 60 samples: a third
    chunks: dict[tuple, set] = {}
    for c, chunk in zip(clip_of(final), plan.chunk_of(np.arange(len(final)))):
        chunks.setdefault(c, set()).add(int(chunk))
    assert len(chunks) == 10 and all(len(v) == 1 for v in chunks.values())        # 40 samples, 4 per clip
    assert plan.num_chunks == 8 and len(set.union(*chunks.values())) == 8
    with pytest.raises(ValueError, match=r"search's seeds \[30, 50\) overlap the final evaluation's \[0, 40\)"):
        overlapping = _frame_prediction_cfg(search={"seed": 30, "num_samples": 20})
        run_evaluation(overlapping, overlapping.evaluate, suite, data, map_batches, progress=lambda s: None)
    with pytest.raises(ValueError, match="2 held-out clips: the schedule search and the final evaluation need"):
        run_evaluation(cfg, cfg.evaluate, suite,
                       EvalData("video", held_out[:2], torch.arange(2), None, [str(i) for i in range(10)], "2 clips"),
                       map_batches, progress=lambda s: None)


def test_step_splits_and_budgeted_candidates():
    splits = step_splits([1, 2, 4, 8], 12)
    assert len(splits) == 455 and len(set(splits)) == 455          # C(15, 3) splits
    assert "8x3,4x3,2x3,1x3" in splits and "1x12" in splits and "8x12" in splits
    assert step_splits([1, 2], 3) == ["1x3", "2x1,1x2", "2x2,1x1", "2x3"]
    cfg = _cfg(search={"max_candidates": 5})
    base = variant_gflops(cfg, Variant("1x12"))
    picked, total, fits = pick_candidates(cfg, cfg.evaluate.search, base / 3)
    assert total == 910 and 0 < fits < total and len(picked) == 5
    assert all(v.gflops <= base / 3 for v in picked)
    assert [v.gflops for v in picked] == sorted((v.gflops for v in picked), reverse=True)
    full_steps = {(sum(int(s.split("x")[1]) for s in v.variant.schedule.split(",") if s.startswith("1x")),
                   v.variant.cache) for v in picked}
    assert len(full_steps) == 5                                     # one per shape group


def test_run_evaluation_search_intervals_claims_and_outputs(digits_suite, tmp_path):
    from nestgen.evaluation.outputs import write_outputs
    suite, data = digits_suite
    cfg = _cfg(schedules=["baseline", "magnets"], caches=["none", "on_switch"], bootstrap_replicates=40,
               interval_chunks=12, search={"max_candidates": 3, "num_samples": 30, "budget_fraction": 0.4})
    torch.manual_seed(0)
    model = NestedTransformer(cfg.model).eval()
    lines = []
    report = run_evaluation(cfg, cfg.evaluate, suite, data, local_map(model, cfg, suite), progress=lines.append,
                            bar=False)
    names = [r.variant.name for r in report.results]
    assert names[:4] == ["baseline cache=none", "baseline cache=on_switch", "magnets cache=none",
                         "magnets cache=on_switch"] and names[4].startswith("searched: ")
    assert [r.variant.searched for r in report.results] == [False] * 4 + [True]
    assert report.searched() is report.results[4] and report.baseline() is report.results[0]
    assert len(report.search.scored) == 3 and not report.search.scored[0].replicates   # no intervals in the search
    assert report.results[4].gflops_per_sample <= 0.4 * report.baseline_gflops + 1e-9
    # the claim check is printed for every variant with both readings: the change, and the
    # change of the excess over the real-data floor (the held-out split, scored like samples)
    claims = [s for s in lines if s.startswith("claim check: ")]
    assert len(claims) == 5 and all("excess over the real-data floor" in c for c in claims)
    assert any(s.startswith("real data: fd_digits ") and s.endswith("on 60 held-out rows (the floor)") for s in lines)
    files = write_outputs(report, str(tmp_path / "eval"))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["baseline"]["variant"] == "baseline cache=none" and summary["baselines"] == {"0": "baseline cache=none"}
    base, magnets = summary["variants"][0], summary["variants"][2]
    assert base["gflops_saving"] == 1.0 and base["quality_change_vs_baseline"] == 0
    # the cached baseline decodes the baseline's samples (no size switch to cache at) in its
    # own stream: paired draws give its change [0, 0] (to float rounding) and a "yes"; draws
    # of its own would give it the width of two independent intervals (~[-10%, +14%] here)
    same = summary["variants"][1]
    assert same["variant"] == "baseline cache=on_switch"
    assert same["quality_change_lo"] == pytest.approx(0, abs=1e-9) == same["quality_change_hi"]
    assert same["claim"]["verdict"] == "yes"
    assert magnets["quality_change_lo"] < magnets["quality_change_hi"] and magnets["baseline"] == "baseline cache=none"
    assert magnets["claim"]["change"] == magnets["quality_change_vs_baseline"]
    assert magnets["claim"]["line"] in summary["claim"]["lines"][2]
    # the real-data row: the held-out split (60 of its 180 rows: the variants' count), every
    # metric with an interval, and the excess reading built on its fd_digits
    real, floor = summary["real_data"], summary["floor"]
    assert real["variant"] == "real data" and real["num_samples"] == 60 and "held-out" in real["source"]
    assert real["intervals"]["fd_digits"]["lo"] < real["intervals"]["fd_digits"]["hi"]
    assert real["digits_accuracy"] > 0.9 and "digits_accuracy" in real["intervals"]      # real digits, real labels
    assert floor["value"] == real["fd_digits"] and floor["share_of_baseline"] == pytest.approx(
        real["fd_digits"] / summary["baseline"]["fd_digits"])
    assert magnets["excess_change_vs_baseline"] == pytest.approx(
        (magnets["fd_digits"] - base["fd_digits"]) / (base["fd_digits"] - real["fd_digits"]))
    assert magnets["claim"]["reading"] == floor["judged_on"]
    assert "real data (60 held-out)" in report.table() and "excess over floor [95%]" in report.table()
    fd = magnets["intervals"]["fd_digits"]
    assert fd["lo"] < fd["hi"] and fd["change"] == magnets["quality_change_vs_baseline"]
    assert summary["intervals"]["replicates"] == 40 and summary["intervals"]["chunks"] == 12
    assert summary["protocols"]["fd_digits"]["num_samples"] == 60
    assert [row["searched"] for row in summary["variants"]] == [False] * 4 + [True]
    assert (tmp_path / "eval" / "quality_vs_gflops.png").read_bytes()[:4] == b"\x89PNG"
    assert all(v["png"].endswith(".png") for v in files["samples"].values()) and len(files["samples"]) == 5
    assert "fd_digits change [95%]" in report.table()


def test_the_reference_is_the_training_split_and_the_held_out_split_scores_the_floor(digits_suite):
    """The reference statistics are the whole digits training split (1617 images), not the
    180 held-out images they used to be; the held-out split is the real-data row."""
    from nestgen.evaluation import score_real_data
    suite, data = digits_suite
    (train, _), (held_out, _) = load_digit_tokens(0.1, 0)
    assert torch.equal(data.reference_tokens, train) and len(train) == 1617 and len(data.train_tokens) == 1617
    assert data.has_real_rows and data.real_name == "real data"
    suite.score(tokens_to_pixels(held_out[:20], [8, 8]), np.zeros(20))
    reference = suite.protocols["fd_digits"]["reference"]
    assert reference["num_samples"] == 1617 and "training split" in reference["source"] and \
        "training split" in suite.reference
    # the row takes held-out rows once each: the variants' count, or all of them when fewer,
    # and reports its values at its own count (the floor is compared with the baseline at
    # that count: tests/test_real_floor.py)
    real = score_real_data(_cfg(num_samples=2000, bootstrap_replicates=20, interval_chunks=12).evaluate, suite, data)
    direct = suite.score(tokens_to_pixels(held_out, [8, 8]), data.holdout_labels.numpy())
    assert real.num_samples == 180 and len(real.replicates["fd_digits"]) == 20
    assert real.metrics["fd_digits"] == pytest.approx(direct["fd_digits"], rel=1e-6)
    assert real.metrics["digits_accuracy"] == pytest.approx(direct["digits_accuracy"])


def test_the_excess_over_the_floor_on_constructed_numbers():
    """(q - q_base) / (q_base - floor) with its interval from the replicates; the verdict reads
    it when the floor is above a quarter of the baseline, and prints both readings."""
    from nestgen.evaluation.claim import claim_check, excess_change
    # variant 40 vs baseline 35 over a floor of 30: +14% of the score, +100% of the excess
    ex = excess_change(40.0, 35.0, 30.0, [40, 41, 39, 40], [35, 35, 36, 34])
    assert ex.value == pytest.approx(1.0)
    assert (ex.lo, ex.hi) == pytest.approx((0.5, 1.5))        # replicate ratios 5/5, 6/5, 3/6, 6/4: the extremes
    change = (40 - 35) / 35
    near = claim_check(3.0, change, 0.12, 0.16, floor_share=30 / 35, excess=ex)
    assert near.reading == "excess" and near.verdict == "no" and near.excess == pytest.approx(1.0)
    assert "excess over the real-data floor (86% of the baseline) +100.0% [" in near.line and \
        near.line.endswith("judged on the excess; within 10%: no")
    # a small floor: the plain change decides, the excess is still printed
    small = claim_check(3.0, 0.04, 0.01, 0.08, floor_share=0.2, excess=excess_change(
        36.4, 35.0, 7.0, [36.4] * 4, [35.0] * 4))
    assert small.verdict == "yes" and small.reading == "change" and "judged on the change" in small.line
    # a baseline at or below the floor has no excess: a variant above the floor is an
    # unbounded loss (written as null in JSON), one below it is no change at all
    above = excess_change(36.0, 30.0, 31.0, [36] * 4, [30] * 4)
    assert above.value == above.lo == np.inf and claim_check(3.0, 0.2, 0.1, 0.3, floor_share=31 / 30,
                                                             excess=above).verdict == "no"
    assert claim_check(3.0, 0.2, 0.1, 0.3, floor_share=0.9, excess=above).as_dict()["excess"] is None
    below = excess_change(30.5, 30.0, 31.0, [30.5] * 4, [30] * 4)
    assert (below.value, below.lo, below.hi) == (0, 0, 0)
    # one replicate whose baseline sinks to the floor bounds nothing above
    wide = excess_change(40.0, 35.0, 30.0, [40, 40, 40, 40], [35, 35, 35, 30])
    assert wide.value == 1.0 and wide.hi == np.inf


def _constructed_report(results, real=None, **decode):
    """An EvaluationReport over given results (no sampling): fd_digits with 4 paired replicates."""
    from nestgen.evaluation.quality import QualitySuite
    from nestgen.evaluation.run import EvaluationReport
    cfg = run_config_from_dict({"model": {"width": 32, "depth": 1}, "decode": decode,
                                "evaluate": {"guidance_scales": [0.0, 2.0], "caches": ["none"]}})
    rows = [VariantResult(v, v.schedule if v.schedule != "baseline" else "1x12", variant_gflops(cfg, v), 0.0,
                          {"fd_digits": q}, replicates={"fd_digits": q + np.array([-1.0, -0.5, 0.5, 1.0])})
            for v, q in results]
    return EvaluationReport(cfg, cfg.evaluate, rows, QualitySuite({}, "fd_digits"), variant_gflops(cfg, Variant("1x12")),
                            None, **({"real": real} if real else {}))


def test_a_guided_variant_is_judged_against_the_guided_baseline():
    """A guided magnets 50% worse than the guided baseline used to be compared with the
    unguided baseline, where it read -25% and "yes"; it is judged against the baseline with
    the same guidance scale, and its GFLOPs saving is against the guided full model's."""
    report = _constructed_report([(Variant("baseline"), 40.0), (Variant("magnets"), 41.0),
                                  (Variant("baseline", guidance_scale=2.0), 20.0),
                                  (Variant("magnets", guidance_scale=2.0), 30.0)])
    guided = report.claims()[3]
    assert guided.change == pytest.approx(0.5) and guided.verdict == "no"       # was -25% and "yes"
    assert [report.baseline_for(r).variant.name for r in report.results] == ["baseline cache=none"] * 2 + \
        ["baseline cache=none g2"] * 2
    assert report.claims()[1].change == pytest.approx(0.025) and report.claims()[1].verdict == "yes"
    assert report.gflops_saving(report.results[3]) == pytest.approx(
        report.results[2].gflops_per_sample / report.results[3].gflops_per_sample)
    assert report.summary()["baselines"] == {"0": "baseline cache=none", "2": "baseline cache=none g2"}


def test_a_floor_near_the_baseline_turns_a_small_change_into_a_large_excess_in_the_report_and_over_seeds():
    """Baseline 35, floor 30: a variant at 36.5 is +4.3% of the baseline's score (within 10%)
    but +30% of its excess over the floor: the report and the seeds table judge the excess,
    and print both readings."""
    from nestgen.evaluation import RealDataResult
    from nestgen.evaluation.seeds import aggregate_summaries, seed_claim_lines, seeds_table_markdown
    summaries = {}
    for seed in (0, 1, 2):
        # as many rows as samples (evaluate.num_samples, 500): the floor is compared as it is
        real = RealDataResult("real data", "held-out", 500, {"fd_digits": 30.0},
                              {"fd_digits": 30.0 + np.array([-0.2, 0.0, 0.1, 0.2])})
        report = _constructed_report([(Variant("baseline"), 35.0 + seed), (Variant("magnets"), 36.5 + seed)], real)
        claim = report.claims()[1]
        assert claim.change == pytest.approx(1.5 / (35 + seed)) and claim.reading == "excess"
        assert claim.excess == pytest.approx(1.5 / (5 + seed)) and claim.verdict == "no"
        summaries[seed] = json.loads(json.dumps(report.summary()))
    assert summaries[0]["floor"]["judged_on"] == "excess" and summaries[0]["real_data"]["num_samples"] == 500
    agg = aggregate_summaries(summaries)
    [line] = seed_claim_lines(agg)
    assert "excess over the real-data floor (83% of the baseline) +25.5% [+14." in line and \
        line.endswith("judged on the excess; within 10%: no")
    table = seeds_table_markdown(agg)
    assert "| excess over floor |" in table and "| real data (500 held-out) | - | - | 30.0 [30.0, 30.0] |" in table


def test_a_guidance_scale_without_a_baseline_is_said_not_compared():
    report = _constructed_report([(Variant("baseline"), 40.0), (Variant("magnets"), 41.0),
                                  (Variant("magnets", guidance_scale=1.0, searched=True), 20.0)])
    assert report.baseline_for(report.results[2]) is None and report.claims()[2] is None
    line = report.claim_lines()[2]
    assert line == ("searched: magnets cache=none g1: no baseline at guidance scale 1 (no other variant was "
                    "evaluated at it): not compared")
    assert report.summary()["variants"][2]["baseline"] is None


def test_the_search_decodes_and_budgets_at_the_served_guidance_scale():
    """The search's candidates decode at decode.guidance_scale, its budget is a share of the
    full model's GFLOPs at that scale (guidance doubles them), and the chosen schedule is
    evaluated at that scale, next to the baseline with the same guidance."""
    from nestgen.evaluation.search import search_schedule
    cfg = run_config_from_dict({"model": {"width": 32, "depth": 1}, "decode": {"guidance_scale": 2.0},
                                "evaluate": {"search": {"max_candidates": 3, "budget_fraction": 0.4}}})
    seen = []

    def score(variants):
        seen.extend(v.variant for v in variants)
        return [VariantResult(v.variant, str(v.prep.schedule), v.gflops, 0.0, {"fd_digits": float(i)})
                for i, v in enumerate(variants)]
    result = search_schedule(cfg, cfg.evaluate.search, score, "fd_digits")
    guided = variant_gflops(cfg, Variant("1x12", guidance_scale=2.0))
    assert guided > 1.9 * variant_gflops(cfg, Variant("1x12"))
    assert result.budget_gflops == pytest.approx(0.4 * guided) and result.baseline_gflops == guided
    assert {v.guidance_scale for v in seen} == {2.0} and result.chosen.guidance_scale == 2.0
    assert result.chosen.searched


def test_metric_registry_lookups():
    assert list(METRICS) == ["fid", "is", "fvd", "fd_digits", "digits_accuracy", "fvd_digits",
                             "digit_clip_accuracy", "frame_pred"]
    assert METRICS["is"].headline == "inception_score" and METRICS["frame_pred"].headline == "frame_pred_mse"
    assert [n for n, m in METRICS.items() if m.feature_net] == ["fid", "is", "fvd"]
    assert METRICS["fid"].feature_net == "inception" and METRICS["fvd"].feature_net == "i3d"
    assert {n for n, m in METRICS.items() if m.kind == "video"} == {"fvd", "fvd_digits", "digit_clip_accuracy",
                                                                      "frame_pred"}
    assert [lower_is_better(v) for v in ("fid", "fvd", "fd_digits", "frame_pred_mse")] == [True] * 4
    assert [lower_is_better(v) for v in ("inception_score", "digits_accuracy", "digit_clip_accuracy",
                                         "frame_pred_psnr")] == [False] * 4


def test_auto_metrics_follow_the_registry():
    cfg = _cfg()
    data = load_eval_data(cfg)
    assert requested_metrics(cfg.evaluate, cfg, data) == ["fid", "is", "fd_digits", "digits_accuracy"]
    uncond = run_config_from_dict({"model": {"width": 32, "depth": 1, "num_classes": 0}})
    assert requested_metrics(uncond.evaluate, uncond, data) == ["fid", "is", "fd_digits"]
    with pytest.raises(ValueError, match=r"unknown \['fdi'\]"):
        requested_metrics(_cfg(metrics=["fd_digits", "fdi"]).evaluate, cfg, data)


def test_metrics_the_data_rules_out_are_unavailable_with_the_reason():
    cfg = _cfg(metrics=["fd_digits", "frame_pred"])
    tokens = torch.zeros(4, 64, dtype=torch.long)
    cats = EvalData("image", tokens, torch.zeros(4, dtype=torch.long), lambda: (tokens, tokens[:, 0]),
                    ["cat", "dog"], "two pets")
    with pytest.raises(ValueError, match="fd_digits: the classes .* are not the digits 0..9; "
                                         "frame_pred: train.cond_tokens is 0"):
        build_quality_suite(cfg, cfg.evaluate, cats, lambda t: tokens_to_pixels(t, cfg.model.grid))


def _rgb64_tokenizer() -> VQTokenizer:
    """A (random) VQ tokenizer rendering 8x8 token grids to 64x64 RGB images."""
    return VQTokenizer(TokenizerConfig(kind="image", channels=3, image_size=64, base_width=8, max_width=16,
                                       downsample=8, codebook_size=17, code_dim=8)).eval()


def _image_shards_cfg(**evaluate):
    """Held-out token rows of a shard set (not the raw digits): rendered by a tokenizer."""
    return run_config_from_dict({"model": {"width": 32, "depth": 1}, "data": {"source": "shards", "url": "memory://x"},
                                 "evaluate": evaluate})


def _held_out(kind: str, n: int, length: int) -> EvalData:
    tokens = torch.randint(0, 17, (n, length), generator=torch.Generator().manual_seed(n))
    labels = torch.arange(n) % 10
    return EvalData(kind, tokens, labels, lambda: (tokens, labels), [str(i) for i in range(10)], "random tokens")


def test_the_held_out_reference_streamed_in_batches_gives_the_one_shot_statistics(digits_suite, fake_i3d_file,
                                                                                   monkeypatch):
    """The reference is rendered evaluate.batch_size rows at a time and reduced as it comes:
    uneven batches of 5 give the statistics of one render of all rows (batch_size >= rows),
    so the same distances and the same clip classifier validation accuracy. Equal to float32
    rounding, not bit for bit: the decoder and the feature nets compute in float32 with
    kernels that depend on the batch size (about 1e-6 relative; a lost row would be ~1e-2)."""
    monkeypatch.setenv("NESTGEN_I3D_PATH", str(fake_i3d_file))
    monkeypatch.setenv("NESTGEN_I3D_SHA256", hashlib.sha256(fake_i3d_file.read_bytes()).hexdigest())
    image_tok, images = _rgb64_tokenizer(), _held_out("image", 32, 64)
    video_tok = VQTokenizer(TokenizerConfig(kind="video", channels=1, image_size=8, frames=4, downsample=4,
                                            temporal_downsample=2, base_width=8, max_width=8, codebook_size=17,
                                            code_dim=8)).eval()
    clips = _held_out("video", 32, 8)

    def scored(batch_size: int) -> tuple[dict, dict]:
        image_cfg = _image_shards_cfg(batch_size=batch_size, metrics=["fd_digits"])
        video_cfg = run_config_from_dict({"model": {"vocab_size": 17, "grid": [2, 2, 2], "width": 32, "depth": 1},
                                          "data": {"source": "shards", "url": "memory://x"},
                                          "evaluate": {"batch_size": batch_size, "metrics": ["fvd", "fvd_digits"]}})
        out, protocols = {}, {}
        for cfg, data, tok in ((image_cfg, images, image_tok), (video_cfg, clips, video_tok)):
            suite = build_quality_suite(cfg, cfg.evaluate, data, lambda t: tokens_to_pixels(t, cfg.model.grid, tok), "cpu")
            assert not suite.unavailable, suite.unavailable
            samples = tokens_to_pixels(data.holdout_tokens.flip(0)[:24] // 2, cfg.model.grid, tok)
            out.update(suite.score(samples, np.arange(24) % 10))
            protocols.update(suite.protocols)
        return out, protocols

    streamed, streamed_protocols = scored(5)
    one_shot, one_shot_protocols = scored(32)
    assert set(streamed) == {"fd_digits", "fvd", "fvd_digits"}
    assert streamed == pytest.approx(one_shot, rel=1e-4) and all(v > 0 for v in streamed.values())
    assert all(streamed_protocols[k]["reference"]["num_samples"] == 32 for k in streamed)
    record = streamed_protocols["fvd_digits"]["feature_net"]
    assert record["val_accuracy"] == one_shot_protocols["fvd_digits"]["feature_net"]["val_accuracy"]


def test_driver_memory_does_not_grow_with_the_held_out_reference(digits_suite):
    """The held-out reference is rendered and reduced one evaluate.batch_size batch at a time:
    peak traced memory while building the suite at 4x the held-out rows is within 10%.
    tracemalloc sees numpy's allocations, not torch's, so the render here copies each batch
    into numpy; holding the rendered split (12 KB a row) could not pass (asserted too)."""
    tok = _rgb64_tokenizer()

    def peak(n: int) -> int:
        cfg = _image_shards_cfg(batch_size=50, metrics=["fd_digits"])
        data = _held_out("image", n, 64)
        tracemalloc.start()
        try:
            suite = build_quality_suite(cfg, cfg.evaluate, data, lambda t: tokens_to_pixels(t, cfg.model.grid, tok).copy(), "cpu")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert list(suite.scorers) == ["fd_digits"]
        return peak

    peak(50)                        # first-use allocations (and the digits classifier) out of the way
    small, large = peak(100), peak(400)
    margin = 0.1 * small + 64 * 1024
    assert large <= small + margin, (small, large)
    assert 300 * 64 * 64 * 3 > 10 * margin               # holding the 300 extra rows could not pass
