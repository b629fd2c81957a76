"""Generated samples -> JSON-ready values: base64 PNG / MP4 files, or raw token ids."""
from __future__ import annotations

import base64

import numpy as np
import torch

from nestgen.images import png_bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def frame_strip(clip: np.ndarray) -> np.ndarray:
    """(T, H, W[, C]) -> (H, T*W[, C]): a clip's frames side by side, as one picture."""
    return np.concatenate(list(clip), axis=1)


def encode_sample(fmt: str, tokens: torch.Tensor, pixels: np.ndarray | None, is_clip: bool, fps: int) -> dict:
    """One sample as {"png": b64} | {"mp4": b64} | {"tokens": [ids]}.

    pixels: (H, W[, C]) for images, (T, H, W[, C]) for clips (None when fmt is tokens); a
    clip asked for as PNG comes as one picture of its frames side by side."""
    if fmt == "tokens":
        return {"tokens": tokens.tolist()}
    if fmt == "mp4":
        from nestgen.data.media import encode_mp4
        return {"mp4": _b64(encode_mp4(pixels, fps=fps))}
    return {"png": _b64(png_bytes(frame_strip(pixels) if is_clip else pixels))}
