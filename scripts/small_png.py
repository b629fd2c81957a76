"""PNG files small enough to commit: the pictures in docs/images are kept under a byte budget
so the repository does not grow by megabytes each time they are regenerated."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

MAX_BYTES = 100_000


def png_of(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_small_png(img: Image.Image, path: Path, max_bytes: int = MAX_BYTES) -> Path:
    """Writes `img` as a PNG of at most `max_bytes`: as it is when it fits, else with a
    256-colour palette (plots, digits and screenshots use few colours), else that palette
    image shrunk by 20% steps until it fits."""
    img = img.convert("RGB")
    data = png_of(img)
    if len(data) > max_bytes:
        img = img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        data = png_of(img)
    while len(data) > max_bytes:
        w, h = img.size
        if min(w, h) < 64:
            raise ValueError(f"{path}: cannot fit {max_bytes} bytes without shrinking it below 64 px")
        img = img.convert("RGB").resize((int(w * 0.8), int(h * 0.8)), Image.Resampling.LANCZOS).quantize(
            256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        data = png_of(img)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
