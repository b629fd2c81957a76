"""Hostile media files against the decoding budgets, each path run in a fresh process whose
memory growth is measured.

Used by tests/test_media_budget.py (in the default suite); this file is also the child's script.

The files: tiny PNGs of extreme aspect ratio (1 x N and N x 2: a few kB that once cost
gigabytes, as the whole image was resized before its centre was cropped), thin MP4s (2 x
8000, 8000 x 2, 16 x 4096), and files whose listed size is over `tokenize.max_file_bytes`
(sparse: they take no disk). Two paths: the decoders on a file's bytes (`load_image`,
`load_video_clips`, as a service decodes a conditioning clip), one process per file; and the
tokenize step's actor (`pipelines.tokenize.TokenizeFiles`: listed, checked against the byte
budget, streamed to the decoder, tokenized by an untrained tokenizer; how memory behaves
does not depend on the weights), one process for all. A process reports each file's row
(output shapes, or the failure's reason) and its peak RSS growth after a warm-up on an
ordinary file (codecs and allocator pools are one-time costs): the kernel's peak (VmHWM),
reset after the warm-up, over the resident size then (Linux only). Its address space is capped
1 GiB above the warm state, so that a regression fails there instead of taking the
machine's memory. Target: every file a row or a failure with its reason, no process
growing by more than GROWTH_LIMIT_MB.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GROWTH_LIMIT_MB = 50.0
SIZE = 64                           # output H = W of the decoders path
ROOT = Path(__file__).resolve().parents[1]


def write_files(folder: Path, n: int, max_file_bytes: int) -> dict[str, Path]:
    """Raw folders in the <split>/<class>/<file> layout: {"images", "videos"} hold the hostile
    files, {"warm_images", "warm_videos"} one ordinary file each."""
    import numpy as np
    from PIL import Image

    from nestgen.data.media import encode_mp4
    dirs = {k: folder / k / "train" / "x" for k in ("images", "videos", "warm_images", "warm_videos")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for w, h in [(1, 400_000), (400_000, 2), (1, n), (n, 2)]:
        Image.new("L", (w, h), 90).save(dirs["images"] / f"{w}x{h}.png")
    for w, h in [(2, 8000), (8000, 2), (16, 4096)]:
        (dirs["videos"] / f"{w}x{h}.mp4").write_bytes(encode_mp4(np.full((8, h, w), 100, np.uint8)))
    for name in ("images/over-budget.png", "videos/over-budget.mp4"):
        with open(dirs[name.split("/")[0]] / name.split("/")[1], "wb") as f:
            f.truncate(max_file_bytes + 1)          # a hole: listed at that size, no disk used
    Image.new("RGB", (16, 16), (40, 90, 200)).save(dirs["warm_images"] / "warm.png")
    (dirs["warm_videos"] / "warm.mp4").write_bytes(encode_mp4(np.full((8, 32, 32), 100, np.uint8)))
    return {k: d.parents[1] for k, d in dirs.items()}


def write_tokenizers(folder: Path) -> dict[str, str]:
    """Untrained small image and video tokenizers: {kind: checkpoint path}."""
    import torch

    from nestgen.tokenizers import TokenizerConfig, VQTokenizer, save_tokenizer
    torch.manual_seed(0)
    cfgs = {"image": TokenizerConfig(kind="image", channels=3, image_size=16, base_width=8, max_width=16,
                                     downsample=4, codebook_size=32, code_dim=8),
            "video": TokenizerConfig(kind="video", channels=1, image_size=32, frames=8, base_width=8, max_width=16,
                                     downsample=8, temporal_downsample=4, codebook_size=32, code_dim=8)}
    out = {}
    for kind, cfg in cfgs.items():
        out[kind] = str(folder / f"{kind}_tokenizer.pt")
        save_tokenizer(out[kind], VQTokenizer(cfg))
    return out


def measure(job: dict, timeout: float = 300.0) -> dict:
    """Run one job in a fresh process: {"rows": [{"file", "shapes" | "error"}], "growth_mb"},
    or {"crashed": the end of its stderr}."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        return {"crashed": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(folder: Path, n: int = 4_000_000) -> dict:
    """Write the files and tokenizers under `folder` and run both paths. Returns {"runs":
    [{"path", "files", "rows", "growth_mb"} | {..., "crashed"}], "max_growth_mb"}."""
    from dataclasses import asdict

    from pipelines.config import TokenizeConfig
    cfg = TokenizeConfig()
    dirs = write_files(folder, n, cfg.max_file_bytes)
    budgets = {"max_image_pixels": cfg.max_image_pixels, "video_limits": asdict(cfg.video_limits()), "fps": cfg.fps}
    runs = []
    for kind in ("images", "videos"):
        for f in sorted((dirs[kind] / "train" / "x").iterdir()):
            if not f.name.startswith("over-budget"):        # bytes in hand: no listing, no byte budget
                runs.append({"path": "decoders", "files": [f.name],
                             **measure({"path": "decoders", "budgets": budgets, "files": [str(f)],
                                        "warm": [str(next(dirs[f"warm_{kind}"].rglob("warm.*")))]})})
    runs.append({"path": "tokenize", "files": ["images/*", "videos/*"],
                 **measure({"path": "tokenize", "tokenizers": write_tokenizers(folder),
                            "warm": [str(dirs["warm_images"]), str(dirs["warm_videos"])],
                            "files": [str(dirs["images"]), str(dirs["videos"])]})})
    return {"runs": runs, "max_growth_mb": max(r.get("growth_mb", float("inf")) for r in runs)}


# ---- the child process ------------------------------------------------------------------

def _memory_mb(key: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key + ":"))


def _cap_address_space(extra: int) -> None:
    import resource
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _decoders(budgets: dict):
    """path -> [row]: the file's bytes through the decoders (no torch here: a light process)."""
    from nestgen.data.media import ClipSpec, MediaError, VideoLimits, load_image, load_video_clips, media_kind
    clip, limits = ClipSpec(frames=8, fps=budgets["fps"], size=SIZE), VideoLimits(**budgets["video_limits"])

    def decode(path: str) -> list[dict]:
        data = Path(path).read_bytes()
        try:
            arrays = ([load_image(data, SIZE, 3, budgets["max_image_pixels"])] if media_kind(path) == "image" else
                      load_video_clips(data, clip, limits, "mp4"))
            return [{"file": Path(path).name, "shapes": [list(a.shape) for a in arrays]}]
        except MediaError as e:
            return [{"file": Path(path).name, "error": str(e)}]
    return decode


def _tokenize(tokenizers: dict[str, str]):
    """raw folder -> [row]: its files through the tokenize step's actor, as one batch."""
    from dataclasses import asdict

    import numpy as np

    from nestgen.data.media import ClipSpec
    from nestgen.data.raw_files import list_raw_files
    from nestgen.tokenizers import load_tokenizer
    from pipelines.config import TokenizeConfig
    from pipelines.tokenize import TokenizeFiles
    cfg = TokenizeConfig()
    actors = {}
    for kind, url in tokenizers.items():
        tok = load_tokenizer(url)
        spec = ClipSpec(frames=tok.frames, fps=cfg.fps, size=tok.image_size, channels=tok.channels,
                        clips_per_video=cfg.clips_per_video)
        actors[kind] = TokenizeFiles(url, tok.hash, asdict(spec), cfg.max_image_pixels, asdict(cfg.video_limits()),
                                     cfg.max_file_bytes)

    def decode(folder: str) -> list[dict]:
        items, unusable, _ = list_raw_files(folder)
        assert not unusable, unusable
        table = actors[items[0]["kind"]]({k: np.array([it[k] for it in items]) for k in items[0]})
        return [{"file": r["source_uri"].rsplit("/", 1)[-1], "id": r["id"], "error": r["error"]} if r["error"] else
                {"file": r["source_uri"].rsplit("/", 1)[-1], "id": r["id"], "tokens": len(r["tokens"])}
                for r in table.to_pylist()]
    return decode


def _child(job: dict) -> None:
    decode = _decoders(job["budgets"]) if job["path"] == "decoders" else _tokenize(job["tokenizers"])
    for w in job["warm"]:
        decode(w)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                # resets VmHWM to the resident size now
    before = _memory_mb("VmRSS")
    _cap_address_space(1 << 30)
    rows = [r for f in job["files"] for r in decode(f)]
    print(json.dumps({"rows": rows, "growth_mb": round(_memory_mb("VmHWM") - before, 1)}))


if __name__ == "__main__":      # the child: python tests/hostile_files.py --child '<job as JSON>'
    _child(json.loads(sys.argv[sys.argv.index("--child") + 1]))
