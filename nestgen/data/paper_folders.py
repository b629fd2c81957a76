"""Procedural stand-ins for ImageNet and UCF101, written in the layouts those data sets ship in,
for the rehearsal at the paper's shapes (experiments.paper_shapes).

- ImageNet (ILSVRC2012 CLS-LOC, as Kaggle ships it): `train/<wnid>/<wnid>_<n>.JPEG`, a flat
  `val/ILSVRC2012_val_<n>.JPEG` labelled by `LOC_val_solution.csv`, and
  `LOC_synset_mapping.txt`; 256x256 RGB JPEGs.
- UCF101: `UCF-101/<Class>/v_<Class>_gNN_cMM.avi` (MPEG-4 part 2 in AVI, 25 fps, like the
  real files) and `ucfTrainTestlist/` with classInd.txt, trainlist01.txt and testlist01.txt;
  groups 1-2 are the test split (the real split 1 holds out groups 1-7 of 25).

Pixels are procedural: each class has its own shape, texture and palette, drawn at a random
position, scale and rotation over a noisy background, so that the classes are learnable and
no two files are alike; clips move each class's shape along its own path. Deterministic
given the seed. Only numpy, Pillow and PyAV (all dependencies of nestgen).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("ellipse", "rhombus", "triangle", "star", "ring", "cross", "stripes", "checker")
UCF_TEST_GROUPS = (1, 2)


def _palette(cls: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A class's (foreground, background) colours: hues spread around the circle."""
    hue = (cls * 0.618034) % 1.0
    fg = Image.new("HSV", (1, 1), (int(hue * 255), 200, 230)).convert("RGB").getpixel((0, 0))
    bg = Image.new("HSV", (1, 1), (int(((hue + 0.5) % 1.0) * 255), 90, 90)).convert("RGB").getpixel((0, 0))
    return fg, bg


def _star(cx: float, cy: float, r: float, angle: float, points: int = 5) -> list[tuple[float, float]]:
    k = np.arange(2 * points)
    rad = np.where(k % 2 == 0, r, r * 0.45)
    a = angle + k * np.pi / points
    return list(zip(cx + rad * np.cos(a), cy + rad * np.sin(a)))


def draw_class(cls: int, size: int, rng: np.random.Generator, center=None, scale=None, angle=None) -> Image.Image:
    """One RGB picture of class `cls`: its shape (SHAPES, cycled) in its colours, textured by
    the class's stripe frequency, over noise. center/scale/angle default to random draws."""
    fg, bg = _palette(cls)
    shape = SHAPES[cls % len(SHAPES)]
    noise = rng.normal(0, 18, (size, size, 3)) + np.array(bg)
    img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    cx, cy = center if center is not None else rng.uniform(0.3, 0.7, 2) * size
    r = (scale if scale is not None else rng.uniform(0.18, 0.32)) * size
    a = angle if angle is not None else rng.uniform(0, 2 * np.pi)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "ellipse":
        d.ellipse([cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r], fill=fg)
    elif shape == "rhombus":
        d.polygon(_star(cx, cy, r, a, 2), fill=fg)
    elif shape == "triangle":
        d.polygon([(cx + r * np.cos(a + k * 2 * np.pi / 3), cy + r * np.sin(a + k * 2 * np.pi / 3)) for k in range(3)],
                  fill=fg)
    elif shape == "star":
        d.polygon(_star(cx, cy, r, a), fill=fg)
    elif shape == "ring":
        d.ellipse(box, outline=fg, width=max(2, int(r / 3)))
    elif shape == "cross":
        w = r / 3
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    else:                                   # stripes / checker: a textured square patch
        yy, xx = np.mgrid[0:size, 0:size]
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        inside = (np.abs(u) < r) & (np.abs(v) < r)
        period = max(4.0, r / (2 + cls % 3))
        on = (np.floor(u / period) % 2 == 0) if shape == "stripes" else \
            ((np.floor(u / period) + np.floor(v / period)) % 2 == 0)
        arr = np.asarray(img).copy()
        arr[inside & on] = fg
        img = Image.fromarray(arr)
    # a second, class-specific cue: the blur level, so shapes shared by classes differ
    return img.filter(ImageFilter.GaussianBlur(0.5 + (cls // len(SHAPES)) % 3))


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def imagenet_wnids(classes: int) -> list[str]:
    """Names shaped like ImageNet's synset ids (n + 8 digits); not real synsets."""
    return [f"n{90000000 + 1000 * c:08d}" for c in range(classes)]


def write_imagenet_folder(root: str | Path, classes: int = 20, train_per_class: int = 8, val_per_class: int = 2,
                          size: int = 256, seed: int = 0) -> dict:
    """Write the ImageNet CLS-LOC layout under root; returns counts and bytes written."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    wnids = imagenet_wnids(classes)
    (root / "val").mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} procedural class {c}\n" for c, w in enumerate(wnids)))
    written = 0
    for c, w in enumerate(wnids):
        (root / "train" / w).mkdir(parents=True, exist_ok=True)
        for i in range(train_per_class):
            data = _jpeg(draw_class(c, size, rng))
            (root / "train" / w / f"{w}_{i}.JPEG").write_bytes(data)
            written += len(data)
    # val: flat, numbered across classes in a shuffled order as the real ones are
    val_labels = rng.permutation(np.repeat(np.arange(classes), val_per_class))
    rows = ["ImageId,PredictionString"]
    for n, c in enumerate(val_labels, 1):
        image_id = f"ILSVRC2012_val_{n:08d}"
        data = _jpeg(draw_class(int(c), size, rng))
        (root / "val" / f"{image_id}.JPEG").write_bytes(data)
        written += len(data)
        rows.append(f"{image_id},{wnids[c]} 10 10 200 200")     # Kaggle's: wnid then a box
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return {"classes": classes, "train": classes * train_per_class, "val": len(val_labels), "bytes": written,
            "size": size}


def _path(cls: int, frames: int, size: int, rng: np.random.Generator):
    """Per-frame (center, scale, angle) of a class's motion: one of four kinds of movement."""
    t = np.arange(frames) / max(1, frames - 1)
    start = rng.uniform(0.3, 0.7, 2) * size
    speed = rng.uniform(0.15, 0.3) * size
    kind = cls % 4
    angle0, scale0 = rng.uniform(0, 2 * np.pi), rng.uniform(0.18, 0.26)
    for k in range(frames):
        if kind == 0:       # slide horizontally
            c = start + [speed * (t[k] - 0.5), 0]
        elif kind == 1:     # slide vertically
            c = start + [0, speed * (t[k] - 0.5)]
        elif kind == 2:     # circle
            c = start + 0.5 * speed * np.array([np.cos(2 * np.pi * t[k]), np.sin(2 * np.pi * t[k])])
        else:               # stay, spin and grow
            c = start
        yield (c, scale0 * (1 + 0.5 * t[k]) if kind == 3 else scale0,
               angle0 + (2 * np.pi * t[k] if kind == 3 else 0.0))


def _avi(frames: list[np.ndarray], fps: int = 25) -> bytes:
    import av
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"qscale": "3", "threads": "1"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def ucf101_classes(classes: int) -> list[str]:
    """CamelCase names like UCF101's (ApplyEyeMakeup, ...); not its real classes."""
    return [f"Procedural{SHAPES[c % len(SHAPES)].capitalize()}{c:03d}" for c in range(classes)]


def write_ucf101_folder(root: str | Path, classes: int = 10, groups: int = 4, clips_per_group: int = 1,
                        frames: int = 64, size: int = 128, fps: int = 25, seed: int = 0) -> dict:
    """Write UCF-101/ and ucfTrainTestlist/ (split 1) under root; returns counts and bytes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = ucf101_classes(classes)
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{c + 1} {n}\n" for c, n in enumerate(names)))
    train, test, written = [], [], 0
    for c, name in enumerate(names):
        (root / "UCF-101" / name).mkdir(parents=True, exist_ok=True)
        for g in range(1, groups + 1):
            for k in range(1, clips_per_group + 1):
                rel = f"{name}/v_{name}_g{g:02d}_c{k:02d}.avi"
                background = int(rng.integers(2**32))      # the same noise in every frame: a still camera
                clip = [np.asarray(draw_class(c, size, np.random.default_rng(background), *pose))
                        for pose in _path(c, frames, size, rng)]
                data = _avi(clip, fps)
                (root / "UCF-101" / rel).write_bytes(data)
                written += len(data)
                (test if g in UCF_TEST_GROUPS else train).append((rel, c + 1))
    (lists / "trainlist01.txt").write_text("".join(f"{rel} {i}\n" for rel, i in train))
    (lists / "testlist01.txt").write_text("".join(f"{rel}\n" for rel, _ in test))
    return {"classes": classes, "train": len(train), "test": len(test), "bytes": written, "size": size,
            "frames": frames, "fps": fps}
