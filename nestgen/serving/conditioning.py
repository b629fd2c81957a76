"""A request's conditioning clip (frame prediction) -> the leading tokens it fixes.

The clip comes as a base64 MP4 or as raw uint8 frames. The frames that the first `n_cond`
tokens cover (whole latent frames: n_cond / (h*w) of them, times the tokenizer's temporal
downsampling; with a causal tokenizer frame 0 alone and then whole groups, e.g. 2 latent
frames = 5 frames) are taken from its start, padded to a whole tokenizer clip by repeating
the last one (the 3-D tokenizer encodes whole clips; a causal one's leading latents do not
depend on the padding at all), and tokenized with the model's own tokenizer; the first `n_cond` ids are the conditioning (MAGVIT's `input->input`: they sit
in the grid and are never re-masked). Later frames of the request are not used, so the
result depends only on the frames the conditioning stands for.
"""
from __future__ import annotations

import base64
import binascii
import logging
import math

import numpy as np
import torch

from nestgen.data.media import ClipSpec, MediaError, MediaLimitError, VideoLimits, read_video
from nestgen.serving.request import RequestError
from nestgen.serving.request import Condition

log = logging.getLogger(__name__)


def frames_needed(n_cond: int, grid: list[int], temporal_downsample: int, causal: bool) -> int:
    """Pixel frames that hold the latent frames of the first n_cond tokens."""
    from nestgen.tokenizers import pixel_frames
    return pixel_frames(math.ceil(n_cond / math.prod(grid[1:])), temporal_downsample, causal)


def _from_mp4(text: str, need: int, size: int, channels: int, limits: VideoLimits) -> np.ndarray:
    """The first `need` frames of a base64 MP4. Opened as MP4 only, its header checked against
    the limits before decoding, and decoded no further than `need` frames. A refusal over a
    limit says which; any other says only that the video is undecodable: FFmpeg's text is
    for the replica's log, as it could tell a client about the replica's files."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("condition.mp4_base64 is not valid base64") from None
    try:
        # fps=0 keeps the source frame rate: the client's frames are used as sent.
        frames, _ = read_video(data, ClipSpec(frames=need, fps=0, size=size, channels=channels), limits, "mp4")
    except MediaLimitError as e:
        raise RequestError(f"condition.mp4_base64: {e}") from None
    except MediaError as e:
        log.warning("refused a conditioning video: %s", e)
        raise RequestError("condition.mp4_base64: undecodable conditioning video (expected an MP4 file "
                           "with a video stream)") from None
    if len(frames) < need:
        raise RequestError(f"condition.mp4_base64 has {len(frames)} frames; this model needs at least {need}")
    return np.stack(frames)


def _from_frames(frames: list, need: int, size: int, channels: int) -> np.ndarray:
    try:
        arr = np.asarray(frames)
    except ValueError:
        raise RequestError("condition.frames must be a regular nested list (T, H, W[, C])", 422) from None
    if arr.dtype.kind not in "iu" or arr.size == 0 or arr.min() < 0 or arr.max() > 255:
        raise RequestError("condition.frames must hold integers in 0..255", 422)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[1:3] != (size, size) or arr.shape[3] not in (1, 3):
        raise RequestError(f"condition.frames must be (T, {size}, {size}) or (T, {size}, {size}, 1|3), "
                           f"got shape {list(np.asarray(frames).shape)}", 422)
    if len(arr) < need:
        raise RequestError(f"condition.frames has {len(arr)} frames; this model needs at least {need}")
    arr = arr.astype(np.uint8)
    if arr.shape[3] != channels:     # gray <-> RGB, as the tokenizer's training clips were made
        arr = np.repeat(arr, 3, axis=3) if channels == 3 else np.round(arr.mean(3, keepdims=True)).astype(np.uint8)
    return arr


def condition_tokens(cond: Condition, tokenizer, n_cond: int, grid: list[int], limits: VideoLimits) -> torch.Tensor:
    """(n_cond,) token ids of the conditioning clip, on CPU; an MP4 must fit `limits`."""
    from nestgen.tokenizers import clips_to_pixels
    if (cond.mp4_base64 is None) == (cond.frames is None):
        raise RequestError("condition: give exactly one of mp4_base64 or frames", 422)
    need = frames_needed(n_cond, grid, tokenizer.temporal_downsample, tokenizer.causal)
    if cond.mp4_base64 is not None:
        clip = _from_mp4(cond.mp4_base64, need, tokenizer.image_size, tokenizer.channels, limits)
    else:
        clip = _from_frames(cond.frames, need, tokenizer.image_size, tokenizer.channels)
    clip = clip[:need]
    if len(clip) < tokenizer.frames:
        clip = np.concatenate([clip, np.repeat(clip[-1:], tokenizer.frames - len(clip), axis=0)])
    ids = tokenizer.encode(clips_to_pixels(clip[None]))
    return ids.reshape(-1)[:n_cond].cpu()
