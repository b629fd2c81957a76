""""Moving digits": clips of one or two handwritten digits bouncing inside the frame
(Moving-MNIST style, built from scikit-learn's digits), as arrays or as MP4 files laid
out like UCF101:

    <out_url>/train/<class>/<id>.mp4
    <out_url>/val/<class>/<id>.mp4

<class> is the (first) digit, "0" .. "9"; <id> is the clip's index in its split, 5 places.
Files are real H.264 MP4 (libx264 via PyAV, yuv420p, gray in all channels), so the video
pipeline reads the same kind of file it would read for UCF101. val clips are made only of
digits held out by `digit_split` (the split the image data uses), so no digit image is
seen in both splits. Everything is deterministic given the seed.
"""
from __future__ import annotations

import fsspec
import numpy as np

from nestgen.data.digits import digit_split
from nestgen.data.image_files import CLASS_NAMES, SPLITS, read_class_folder, upscaled_digits
from nestgen.data.media import decode_mp4, encode_mp4


def _trajectory(rng: np.random.Generator, frames: int, limit: int) -> np.ndarray:
    """(frames, 2) integer top-left (y, x) of a digit moving at constant speed and bouncing
    off the walls; positions stay in [0, limit]."""
    pos = rng.uniform(0, limit, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.04, 0.07) * (limit + 1)   # in pixels per frame
    vel = speed * np.array([np.sin(angle), np.cos(angle)])
    out = np.empty((frames, 2), dtype=np.int64)
    for t in range(frames):
        out[t] = np.round(pos)
        pos = pos + vel
        for d in range(2):                           # reflect at the walls
            if pos[d] < 0:
                pos[d], vel[d] = -pos[d], -vel[d]
            elif pos[d] > limit:
                pos[d], vel[d] = 2 * limit - pos[d], -vel[d]
    return np.clip(out, 0, limit)


def make_moving_digit_clips(n: int, frames: int = 16, size: int = 64, digits_per_clip: int = 1,
                            seed: int = 0, digit_size: int | None = None,
                            labels: np.ndarray | None = None, pool: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """n clips as (n, frames, size, size) uint8 gray and their labels (n,) = the first digit.

    labels: the first digit of each clip (random when None); pool: indices into the
    scikit-learn digits that may be used (all when None); digit_size defaults to 7/16 of
    the frame (28 px in 64, as Moving MNIST)."""
    if digits_per_clip not in (1, 2):
        raise ValueError(f"digits_per_clip must be 1 or 2, got {digits_per_clip}")
    ds = digit_size or max(4, size * 7 // 16)
    if ds > size:
        raise ValueError(f"digit_size {ds} does not fit in a {size}x{size} frame")
    glyphs, all_labels = upscaled_digits(ds)
    pool = np.arange(len(glyphs)) if pool is None else np.asarray(pool)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n) if labels is None else np.asarray(labels, dtype=np.int64)
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} clips")
    by_class = {c: pool[all_labels[pool] == c] for c in range(10)}
    clips = np.zeros((n, frames, size, size), dtype=np.uint8)
    for i, lab in enumerate(labels):
        if len(by_class[int(lab)]) == 0:
            raise ValueError(f"no digit of class {lab} in the pool")
        picks = [rng.choice(by_class[int(lab)])] + [rng.choice(pool) for _ in range(digits_per_clip - 1)]
        for g in picks:
            for t, (y, x) in enumerate(_trajectory(rng, frames, size - ds)):
                # max() composes overlapping digits like Moving MNIST (no occlusion order).
                view = clips[i, t, y:y + ds, x:x + ds]
                np.maximum(view, glyphs[g], out=view)
    return clips, labels.astype(np.int64)


def write_moving_digits(out_url: str, num_clips_per_class: int = 20, frames: int = 16, size: int = 64,
                        fps: int = 8, digits_per_clip: int = 1, seed: int = 0,
                        holdout_fraction: float = 0.2, digit_size: int | None = None) -> dict:
    """Write num_clips_per_class clips per class, split train/val by holdout_fraction, as MP4
    files under `out_url` (any fsspec URL). Returns {"train": n, "val": n, "classes": 10,
    "per_class": {split: n per class}, "frames", "size", "fps"}."""
    if size % 2:
        raise ValueError(f"size must be even (yuv420p), got {size}")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    glyphs, _ = upscaled_digits(digit_size or max(4, size * 7 // 16))
    pools = digit_split(len(glyphs), holdout_fraction, seed)
    n_val = int(round(num_clips_per_class * holdout_fraction))
    fs, root = fsspec.core.url_to_fs(out_url)
    root = root.rstrip("/")
    counts: dict = {"classes": len(CLASS_NAMES), "frames": frames, "size": size, "fps": fps,
                    "per_class": {}}
    for k, (split, pool, per_class) in enumerate(zip(SPLITS, pools, (num_clips_per_class - n_val, n_val))):
        labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
        clips, labels = make_moving_digit_clips(len(labels), frames, size, digits_per_clip,
                                                seed=seed * 2 + k, digit_size=digit_size,
                                                labels=labels, pool=pool)
        for c in CLASS_NAMES:
            fs.makedirs(f"{root}/{split}/{c}", exist_ok=True)
        for i, (clip, lab) in enumerate(zip(clips, labels)):
            with fs.open(f"{root}/{split}/{CLASS_NAMES[lab]}/{i:05d}.mp4", "wb") as f:
                f.write(encode_mp4(clip, fps))
        counts[split] = len(labels)
        counts["per_class"][split] = per_class
    return counts


def read_video_folder(url: str, split: str = "train", gray: bool = True
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read back `<url>/<split>/<class>/*.mp4`: clips (N, T, H, W[, 3]) uint8, labels, ids."""
    return read_class_folder(url, split, "mp4", lambda data: decode_mp4(data, gray=gray))
