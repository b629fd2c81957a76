"""The README's pictures (scripts.readme_pictures) from evaluate folders written by the real
writer (nestgen.evaluation.outputs.write_outputs), with known pixels: no model, no Ray."""
import json

import numpy as np
import pytest
from PIL import Image

from nestgen.decoding.schedule import resolve_schedule
from nestgen.evaluation.outputs import write_outputs
from nestgen.evaluation.quality import QualitySuite
from nestgen.evaluation.run import EvaluationReport
from nestgen.evaluation.search import SearchResult
from nestgen.evaluation.variants import Variant, VariantResult, variant_gflops
from pipelines.config import run_config_from_dict
from scripts.readme_pictures import caption, frame_strip, main, pick_variants, read_frames
from scripts.small_png import MAX_BYTES, save_small_png

FRAMES = 6


def _pipeline_folder(root, grids: dict[str, np.ndarray], metric: str) -> dict:
    """A pipeline output folder whose dag.json names one finished evaluate step holding
    baseline, magnets (no cache and cached) and searched variants with the given sample pixels."""
    cfg = run_config_from_dict({"model": {"width": 32, "depth": 1}, "evaluate": {"grid_samples": 4}})
    variants = {"baseline": Variant("baseline"), "magnets_nocache": Variant("magnets"),
                "magnets": Variant("magnets", "on_switch"), "searched": Variant("8x2,4x6,2x2,1x2", searched=True)}
    full = variant_gflops(cfg, Variant("baseline"))       # what the report's savings are against
    gflops = {"baseline": full, "magnets_nocache": full / 2.5, "magnets": full / 4, "searched": full / 3.3}
    results = [VariantResult(v, str(resolve_schedule(v.schedule, cfg.model.nest_factors)), gflops[k], 0.01,
                             {metric: 10.0 + i}, grids[k])
               for i, (k, v) in enumerate(variants.items())]
    search = SearchResult(0.7, 2.0, 10, 4, [], variants["searched"], metric)
    report = EvaluationReport(cfg, cfg.evaluate, results, QualitySuite({}, metric), full, search)
    folder = root / "evaluate-0123456789ab"
    write_outputs(report, str(folder))
    steps = [{"name": "train", "folder": str(root / "train-x"), "status": "done"},
             {"name": "evaluate", "folder": str(folder), "status": "done"}]
    (root / "dag.json").write_text(json.dumps({"output_url": str(root), "steps": steps}))
    return json.loads((folder / "summary.json").read_text())


@pytest.fixture
def runs(tmp_path):
    rng = np.random.default_rng(0)
    # images: 4 samples of 32x32 RGB per variant, each variant its own pixels
    images = {k: rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
              for k in ("baseline", "magnets_nocache", "magnets", "searched")}
    image_run = tmp_path / "digits"
    image_run.mkdir()
    summary = _pipeline_folder(image_run, images, "fd_digits")
    # video: 4 clips of 6 frames of 16x16 whose grey level is 100 + 20 t (never the grid's pad grey)
    levels = (100 + 20 * np.arange(FRAMES)).astype(np.uint8)
    clip = np.broadcast_to(levels[:, None, None, None], (FRAMES, 16, 16, 3))
    clips = {k: np.stack([clip] * 4).copy() for k in images}
    video_run = tmp_path / "moving"
    video_run.mkdir()
    _pipeline_folder(video_run, clips, "fvd_digits")
    return image_run, video_run, images, summary


def _segments(line: np.ndarray) -> list[np.ndarray]:
    """Runs of non-white pixels of one image row."""
    white = (line >= 250).all(-1)
    cuts = np.flatnonzero(np.diff(np.r_[1, white.astype(int), 1]))
    return [line[a:b] for a, b in zip(cuts[::2], cuts[1::2])]


def test_pictures_from_finished_image_and_video_runs(runs, tmp_path):
    image_run, video_run, images, summary = runs
    out = tmp_path / "images"
    written = main(["--run", str(image_run), "--video-run", str(video_run), "--out", str(out), "--clips", "2"])
    names = ["quality_vs_gflops.png", "samples_baseline.png", "samples_magnets.png", "samples_searched.png",
             "video_frames.png"]
    assert [p.name for p in written] == names
    assert all(0 < (out / n).stat().st_size <= MAX_BYTES for n in names)

    # the plot is the evaluate step's own (it fits the budget as it is)
    ev = image_run / "evaluate-0123456789ab"
    assert np.array_equal(np.asarray(Image.open(out / names[0]).convert("RGB")),
                          np.asarray(Image.open(ev / "quality_vs_gflops.png").convert("RGB")))

    # each picture is its variant's sample grid under a caption band; MaGNeTS is the cached one
    for kind in ("baseline", "magnets", "searched"):
        pic = np.asarray(Image.open(out / f"samples_{kind}.png").convert("RGB"))
        first = images[kind][0].repeat(2, 0).repeat(2, 1)                    # 32 px samples are drawn at 2x
        top = pic.shape[0] - 66                           # the grid: one row of four 64 px samples, 1 px pads
        assert np.array_equal(pic[top + 1:top + 65, 1:65], first), kind
        band = pic[:top]
        assert (band < 100).any() and (band == 255).mean() > 0.5                  # dark text on white

    # the frame strip: 2 clips as rows, all 6 frames side by side, time left to right
    strip = np.asarray(Image.open(out / "video_frames.png").convert("RGB")).astype(int)
    for row in (strip[-1], strip[-70]):                   # a line through the last and the first clip
        segs = _segments(row)
        assert len(segs) == FRAMES and len({len(s) for s in segs}) == 1
        grey = [s.mean() for s in segs]
        assert np.allclose(grey, 100 + 20 * np.arange(FRAMES), atol=4), grey


def test_the_strip_reads_the_mp4_like_the_gif(runs):
    _, video_run, _, _ = runs
    samples = video_run / "evaluate-0123456789ab" / "samples"
    gif, mp4 = samples / "magnets_cache_on_switch.gif", samples / "magnets_cache_on_switch.mp4"
    a, b = read_frames(gif), read_frames(mp4)
    assert a.shape == b.shape and a.shape[0] == FRAMES and np.abs(a.astype(int) - b).mean() < 3
    sa, sb = frame_strip(gif, "t", clips=3, max_frames=4), frame_strip(mp4, "t", clips=3, max_frames=4)
    assert sa.size == sb.size
    segs = _segments(np.asarray(sa.convert("RGB"))[-1].astype(int))
    assert len(segs) == 4 and [round(s.mean()) for s in segs][0] < [round(s.mean()) for s in segs][-1]


def test_captions_quote_the_summary(runs):
    _, _, _, summary = runs
    picked = pick_variants(summary)
    assert picked["baseline"]["variant"] == "baseline cache=none"
    assert picked["magnets"]["variant"] == "magnets cache=on_switch"
    assert picked["searched"]["variant"] == "searched: 8x2,4x6,2x2,1x2 cache=none"
    assert caption("magnets", picked["magnets"], "fd_digits") == [
        "MaGNeTS: 8x3,4x3,2x3,1x3, cache=on_switch",
        f"{picked['baseline']['gflops_per_sample'] / 4:.3g} GFLOPs/sample (4.00x saving), fd_digits 12"]


def test_big_pictures_are_shrunk_under_the_budget(tmp_path):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 450, 3), dtype=np.uint8))
    p = save_small_png(noise, tmp_path / "n.png")
    with Image.open(p) as im:
        assert p.stat().st_size <= MAX_BYTES and im.width < 450 and im.width / im.height == pytest.approx(1.5, 0.01)


@pytest.mark.parametrize("text", ["not json", '{"steps": "x"}', '{"steps": [{"name": "evaluate"}]}', "[]"])
def test_a_malformed_dag_json_is_one_clear_error(tmp_path, text):
    (tmp_path / "dag.json").write_text(text)
    with pytest.raises(SystemExit, match=r"dag.json is not a pipeline's dag.json .*point --run at the output folder"):
        main(["--run", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="has neither dag.json"):
        main(["--run", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
