"""Sample grids as PNG files (Pillow), written through fsspec."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from nestgen.storage import write_bytes_atomic


def make_grid(images: np.ndarray, nrow: int, scale: int = 1, pad: int = 1) -> np.ndarray:
    """(B, H, W) or (B, H, W, C) uint8 -> one (rows*H, nrow*W[, C]) uint8 image."""
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    b, h, w = images.shape[:3]
    rows = (b + nrow - 1) // nrow
    shape = (rows * (h + pad) + pad, nrow * (w + pad) + pad) + images.shape[3:]
    grid = np.full(shape, 64, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return grid


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def save_png(url: str, image: np.ndarray) -> str:
    return write_bytes_atomic(url, png_bytes(image))


def video_grid(clips: np.ndarray, nrow: int, scale: int = 1) -> np.ndarray:
    """(B, T, H, W[, C]) uint8 clips -> (T, rows*H', nrow*W'[, C]) frames of a grid of clips,
    padded to even sizes (H.264's yuv420p needs them)."""
    frames = np.stack([make_grid(clips[:, t], nrow=nrow, scale=scale) for t in range(clips.shape[1])])
    pad = [(0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2)] + [(0, 0)] * (frames.ndim - 3)
    return np.pad(frames, pad)


def gif_bytes(frames: np.ndarray, fps: float = 8) -> bytes:
    """(T, H, W[, C]) uint8 frames -> a looping GIF (for viewers without H.264)."""
    imgs = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()
