"""An evaluation's files under its output URL: per-variant sample grids (PNG) and, for video
models, sample videos (MP4 + GIF); the quality-vs-GFLOPs plot; summary.json written last.

    <out>/samples/<slug>.png | .mp4 | .gif
    <out>/quality_vs_gflops.png
    <out>/summary.json
"""
from __future__ import annotations

import re

import numpy as np

from nestgen.evaluation.report import quality_plot_png
from nestgen.evaluation.run import EvaluationReport
from nestgen.evaluation.variants import VariantResult
from nestgen.images import gif_bytes, make_grid, png_bytes, video_grid
from nestgen.storage import join, write_bytes_atomic, write_json_atomic

SUMMARY = "summary.json"
PLOT = "quality_vs_gflops.png"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def sample_files(r: VariantResult, n: int, nrow: int) -> dict[str, bytes]:
    """{extension: bytes} for the first n samples of a variant."""
    px = r.grid[:n]
    scale = 4 if px.shape[1] <= 16 else 2
    if px.ndim == 5 or (px.ndim == 4 and px.shape[-1] not in (1, 3)):         # clips
        frames = video_grid(px, nrow=nrow, scale=scale)
        from nestgen.data.media import encode_mp4
        return {"mp4": encode_mp4(frames), "gif": gif_bytes(frames),
                "png": png_bytes(np.concatenate(list(frames), axis=1))}
    return {"png": png_bytes(make_grid(px, nrow=nrow, scale=scale))}


def write_outputs(report: EvaluationReport, out: str) -> dict[str, object]:
    """Write every file; returns {"samples": {variant: {ext: url}}, "plot": url, "summary": url}."""
    cfg = report.cfg
    n = report.evaluate.grid_samples
    nrow = max(1, min(n, cfg.model.num_classes or 8))
    samples = {}
    for r in report.results:
        if r.grid is None:
            continue
        samples[r.variant.name] = {ext: write_bytes_atomic(join(out, "samples", f"{slug(r.variant.name)}.{ext}"), data)
                                   for ext, data in sample_files(r, n, nrow).items()}
    plot = write_bytes_atomic(join(out, PLOT), quality_plot_png(
        report.results, report.metric, report.suite.lower_is_better,
        report.search.scored if report.search else None, title=f"{cfg.name}: {report.metric} vs decode GFLOPs"))
    summary = report.summary()
    summary["files"] = {"samples": samples, "plot": plot}
    url = write_json_atomic(join(out, SUMMARY), summary)
    return {"samples": samples, "plot": plot, "summary": url}
