"""scikit-learn's handwritten digits as an image-file data set laid out like ImageNet.

    <out_url>/train/<class>/<id>.png
    <out_url>/val/<class>/<id>.png

<class> is the digit as a decimal string, "0" .. "9" (so a sorted listing of the class
folders gives the class index, as torchvision's ImageFolder assumes); <id> is the digit's
index in `sklearn.datasets.load_digits()`, zero-padded to 4 places. The 8x8 images with
17 gray levels are upscaled (bicubic) to size x size and stored as RGB (gray in all three
channels), so the files look like any RGB image set. The train/val split is
`nestgen.data.digits.digit_split`, so the file-based and the token-based pipelines hold out
the same digits for the same holdout_fraction and seed.
"""
from __future__ import annotations

import functools
import io
from typing import Callable

import fsspec
import numpy as np
from PIL import Image

from nestgen.data.digits import digit_split, raw_digits
from nestgen.images import png_bytes

CLASS_NAMES = [str(i) for i in range(10)]
SPLITS = ("train", "val")


@functools.lru_cache(maxsize=8)
def upscaled_digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, size, size) uint8 gray (0..255) and their labels (N,)."""
    raw, labels = raw_digits()
    out = np.empty((len(raw), size, size), dtype=np.uint8)
    for i, img in enumerate(raw):
        small = Image.fromarray(np.round(img * (255.0 / 16.0)).astype(np.uint8))
        out[i] = np.asarray(small.resize((size, size), Image.BICUBIC))
    out.setflags(write=False)              # cached: callers must copy before editing
    return out, labels


def digit_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 RGB digits and labels (N,), without writing files."""
    gray, labels = upscaled_digits(size)
    return np.repeat(gray[..., None], 3, axis=-1), labels.copy()


def write_digit_images(out_url: str, size: int = 32, holdout_fraction: float = 0.1, seed: int = 0) -> dict:
    """Write the digits as PNG files under `out_url` (any fsspec URL); returns
    {"train": n, "val": n, "classes": 10, "per_class": {split: {class: n}}, "size": size}."""
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    images, labels = digit_images(size)
    train_idx, val_idx = digit_split(len(images), holdout_fraction, seed)
    fs, root = fsspec.core.url_to_fs(out_url)
    root = root.rstrip("/")
    counts: dict = {"classes": len(CLASS_NAMES), "size": size, "per_class": {}}
    for split, idx in zip(SPLITS, (train_idx, val_idx)):
        per_class = {c: 0 for c in CLASS_NAMES}
        for c in CLASS_NAMES:
            fs.makedirs(f"{root}/{split}/{c}", exist_ok=True)
        for i in sorted(idx.tolist()):
            c = CLASS_NAMES[labels[i]]
            with fs.open(f"{root}/{split}/{c}/{i:04d}.png", "wb") as f:
                f.write(png_bytes(images[i]))
            per_class[c] += 1
        counts[split] = len(idx)
        counts["per_class"][split] = per_class
    return counts


def read_class_folder(url: str, split: str, ext: str, decode: Callable[[bytes], np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read back `<url>/<split>/<class>/*.<ext>` (a digits layout): the decoded files stacked,
    labels (N,) and file ids, in sorted path order."""
    fs, root = fsspec.core.url_to_fs(url)
    paths = sorted(fs.glob(f"{root.rstrip('/')}/{split}/*/*.{ext}"))
    if not paths:
        raise FileNotFoundError(f"no {ext.upper()} files under {url}/{split}/<class>/")
    items, labels, ids = [], [], []
    for p in paths:
        cls, name = p.split("/")[-2:]
        with fs.open(p, "rb") as f:
            items.append(decode(f.read()))
        labels.append(CLASS_NAMES.index(cls))
        ids.append(name.rsplit(".", 1)[0])
    return np.stack(items), np.asarray(labels, dtype=np.int64), ids


def read_image_folder(url: str, split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read back `<url>/<split>/<class>/*.png`: (N, H, W, 3) uint8, labels (N,), file ids."""
    return read_class_folder(url, split, "png", lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
