"""The README's pictures, made from finished pipeline output folders (`make pictures`):

    python -m scripts.readme_pictures --run runs/pipeline [--video-run RUN] --out docs/images

From the image run's `evaluate` step (the folder dag.json names, or an evaluate folder
itself): its quality-vs-GFLOPs plot, and one labelled sample grid for each of the baseline,
MaGNeTS (the `magnets` schedule, with its KV cache when it was evaluated with one) and the
searched schedule. From a video run's `evaluate` step (optional): a frame strip, a few
sample clips of the MaGNeTS variant as rows of frames, time left to right. Every file is a
PNG under 100 kB (scripts.small_png); labels quote the run's summary.json, nothing else.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from scripts.small_png import save_small_png

PAD_VALUE = 64          # the grey between cells of nestgen.images.make_grid
SCHEDULES = ("baseline", "magnets", "searched")


def evaluate_folder(run: Path) -> Path:
    """The evaluate step's folder of a pipeline output folder (the first seed's with
    pipeline.seeds), or `run` itself when it is one."""
    if (run / "summary.json").is_file():
        return run
    dag = run / "dag.json"
    if not dag.is_file():
        raise SystemExit(f"{run} has neither dag.json (a pipeline output folder) nor summary.json (an evaluate folder)")
    try:
        done = [s for s in json.loads(dag.read_text())["steps"]
                if (s["name"] == "evaluate" or s["name"].startswith("evaluate-seed"))
                and s["status"] in ("done", "skipped")]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SystemExit(f"{dag} is not a pipeline's dag.json ({type(e).__name__}: {e}): point --run at the "
                         "output folder of `nestgen run`") from None
    if not done:
        raise SystemExit(f"{dag} lists no finished evaluate step: run the pipeline to the end first")
    return run / Path(done[0]["folder"]).name       # the folder may be relative to where the pipeline ran


def pick_variants(summary: dict) -> dict[str, dict]:
    """{baseline | magnets | searched: summary row}: the baseline the summary measures against,
    the `magnets` schedule (cached if evaluated so) and the search's choice; absent ones left out."""
    rows = summary["variants"]
    out = {"baseline": next(r for r in rows if r["variant"] == summary["baseline"]["variant"])}
    magnets = [r for r in rows if not r["searched"] and r["variant"].split(" cache=")[0] == "magnets"]
    if magnets:
        out["magnets"] = max(magnets, key=lambda r: (r["cache"] != "none",
                                                     r["guidance_scale"] == out["baseline"]["guidance_scale"]))
    searched = [r for r in rows if r["searched"]]
    if searched:
        out["searched"] = searched[0]
    return out


def caption(kind: str, row: dict, metric: str) -> list[str]:
    """Two lines: what was decoded, then its compute and quality as summary.json has them."""
    name = {"baseline": "baseline", "magnets": "MaGNeTS", "searched": "searched schedule"}[kind]
    first = f"{name}: {row['schedule']}, cache={row['cache']}"
    second = f"{row['gflops_per_sample']:.3g} GFLOPs/sample ({row['gflops_saving']:.2f}x saving)"
    if isinstance(row.get(metric), (int, float)):
        second += f", {metric} {row[metric]:.3g}"
    return [first, second]


def font(size: int = 13) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager          # ships DejaVu Sans: the same text on every machine
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def labelled(img: Image.Image, lines: list[str], size: int = 13) -> Image.Image:
    """`img` under a white band holding `lines` (widened to fit the text when needed)."""
    f = font(size)
    text_w = max(int(f.getlength(s)) for s in lines) + 12
    band = (size + 5) * len(lines) + 8
    out = Image.new("RGB", (max(img.width, text_w), img.height + band), "white")
    draw = ImageDraw.Draw(out)
    for i, s in enumerate(lines):
        draw.text((6, 4 + i * (size + 5)), s, fill="black", font=f)
    out.paste(img.convert("RGB"), (0, band))
    return out


def shrink_to(img: Image.Image, max_width: int) -> Image.Image:
    """`img` scaled down to `max_width` when wider (before labelling, so the text stays sharp)."""
    if img.width <= max_width:
        return img
    return img.convert("RGB").resize((max_width, round(img.height * max_width / img.width)), Image.Resampling.LANCZOS)


def read_frames(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a sample video: the GIF (exact grid colours) or the MP4."""
    if path.suffix == ".gif":
        with Image.open(path) as im:
            frames = []
            for i in range(im.n_frames):
                im.seek(i)
                frames.append(np.asarray(im.convert("RGB")))
        return np.stack(frames)
    from nestgen.data.media import decode_mp4
    return decode_mp4(path.read_bytes())


def _bands(is_pad: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of non-pad lines, [start, stop), at least 2 lines long."""
    out, start = [], None
    for i, pad in enumerate(list(is_pad) + [True]):
        if not pad and start is None:
            start = i
        elif pad and start is not None:
            if i - start >= 2:
                out.append((start, i))
            start = None
    return out


def grid_cells(frames: np.ndarray, tol: int = 10) -> list[tuple[int, int, int, int]]:
    """The clips of a video grid (nestgen.images.video_grid): (y0, y1, x0, x1) of each cell in
    reading order, found as the regions between lines of the grey pad in every frame; empty
    cells (all pad) are left out."""
    pad = (np.abs(frames.astype(np.int16) - PAD_VALUE) <= tol).all(-1).all(0)       # (H, W)
    rows, cols = _bands(pad.mean(1) > 0.9), _bands(pad.mean(0) > 0.9)
    return [(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols if not pad[y0:y1, x0:x1].all()]


def frame_strip(path: Path, title: str, clips: int = 3, max_frames: int = 8, gap: int = 3,
                cell: int = 112) -> Image.Image:
    """Rows of frames of the first `clips` clips of a sample video, at most `max_frames`
    evenly spaced frames each (clips wider than `cell` px scaled down to it), under a caption
    and a t= label per column."""
    frames = read_frames(path)
    cells = grid_cells(frames)[:clips] or [(0, frames.shape[1], 0, frames.shape[2])]
    t_idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    h = max(y1 - y0 for y0, y1, _, _ in cells)
    w = max(x1 - x0 for _, _, x0, x1 in cells)
    if w > cell:
        h, w = round(h * cell / w), cell
    f = font(11)
    head = 16
    strip = Image.new("RGB", (len(t_idx) * (w + gap) - gap, head + len(cells) * (h + gap) - gap), "white")
    draw = ImageDraw.Draw(strip)
    for j, t in enumerate(t_idx):
        draw.text((j * (w + gap) + 2, 1), f"t={t}", fill="black", font=f)
        for i, (y0, y1, x0, x1) in enumerate(cells):
            clip = Image.fromarray(frames[t, y0:y1, x0:x1])
            if clip.width > w:
                clip = clip.resize((w, round(clip.height * w / clip.width)), Image.Resampling.LANCZOS)
            strip.paste(clip, (j * (w + gap), head + i * (h + gap)))
    return labelled(strip, [title, f"{len(cells)} sample clips, frames {t_idx[0]}..{t_idx[-1]} of {len(frames)}"])


def sample_file(folder: Path, summary: dict, row: dict, exts: tuple[str, ...]) -> Path:
    files = summary["files"]["samples"].get(row["variant"], {})
    for ext in exts:
        if ext in files:
            local = folder / "samples" / Path(files[ext]).name       # the folder may have moved since
            return local if local.exists() else Path(files[ext])
    raise SystemExit(f"{folder}: no {'/'.join(exts)} sample for {row['variant']!r} (evaluate.grid_samples = 0?)")


def image_pictures(run: Path, out: Path, max_width: int = 720) -> list[Path]:
    folder = evaluate_folder(run)
    summary = json.loads((folder / "summary.json").read_text())
    written = [save_small_png(Image.open(folder / "quality_vs_gflops.png"), out / "quality_vs_gflops.png")]
    picked = pick_variants(summary)
    for kind in SCHEDULES:
        if kind not in picked:
            print(f"no {kind} variant in {folder / 'summary.json'}: samples_{kind}.png not written")
            continue
        grid = shrink_to(Image.open(sample_file(folder, summary, picked[kind], ("png",))), max_width)
        written.append(save_small_png(labelled(grid, caption(kind, picked[kind], summary["metric"])),
                                      out / f"samples_{kind}.png"))
    return written


def video_pictures(run: Path, out: Path, clips: int, max_frames: int) -> list[Path]:
    folder = evaluate_folder(run)
    summary = json.loads((folder / "summary.json").read_text())
    picked = pick_variants(summary)
    kind = "magnets" if "magnets" in picked else "baseline"
    row = picked[kind]
    strip = frame_strip(sample_file(folder, summary, row, ("gif", "mp4")), caption(kind, row, summary["metric"])[0],
                        clips=clips, max_frames=max_frames)
    return [save_small_png(strip, out / "video_frames.png")]


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(prog="python -m scripts.readme_pictures", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="an image pipeline's output folder (or its evaluate folder)")
    ap.add_argument("--video-run", type=Path, help="a video pipeline's output folder: adds video_frames.png")
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--clips", type=int, default=3, help="sample clips (rows) in the frame strip")
    ap.add_argument("--frames", type=int, default=8, help="at most this many frames per clip in the strip")
    a = ap.parse_args(argv)
    written = image_pictures(a.run, a.out)
    if a.video_run:
        written += video_pictures(a.video_run, a.out, a.clips, a.frames)
    for p in written:
        print(f"{p}  {p.stat().st_size / 1000:.0f} kB")
    return written


if __name__ == "__main__":
    main()
