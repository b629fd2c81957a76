"""Image and video files <-> uint8 arrays.

Decoding for training data: images through Pillow (resize the short side, center crop);
videos through PyAV (resample to a target fps, fixed clip length, resize + center crop,
several clips per long video). Every failure is a `MediaError` with a reason that a
manifest can record. Plus the one H.264 MP4 encoder and its plain decoder, used by the
moving-digits data, evaluation sample videos and the server's MP4 responses.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


class MediaError(ValueError):
    """A file that cannot be turned into pixels; the message is the reason."""


def media_kind(path: str) -> str | None:
    low = path.lower()
    if low.endswith(IMAGE_EXTENSIONS):
        return "image"
    if low.endswith(VIDEO_EXTENSIONS):
        return "video"
    return None


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC if scale > 1 else Image.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def load_image(data: bytes, size: int, channels: int = 3) -> np.ndarray:
    """Encoded image bytes -> (size, size, channels) uint8."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _to_array(resize_center_crop(img, size), channels)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"undecodable image: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class ClipSpec:
    frames: int = 16            # frames per clip
    fps: float = 8.0            # frames are resampled to this rate (0 keeps the source rate)
    size: int = 64              # output H = W
    channels: int = 3
    clips_per_video: int = 1    # up to this many non-overlapping clips from the start


def _decode_frames(data: bytes) -> tuple[list[Image.Image], list[float]]:
    import av  # PyAV: imported here so that image-only users never load it

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            frames, times = [], []
            for frame in container.decode(stream):
                frames.append(frame.to_image())
                t = frame.time if frame.time is not None else len(times) / float(stream.average_rate or 25)
                times.append(float(t))
            return frames, times
    except MediaError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
        raise MediaError(f"undecodable video: {type(e).__name__}: {e}") from None


def load_video_clips(data: bytes, spec: ClipSpec) -> list[np.ndarray]:
    """Encoded video bytes -> list of (frames, size, size, channels) uint8 clips."""
    frames, times = _decode_frames(data)
    if not frames:
        raise MediaError("video has no decodable frames")
    if spec.fps > 0 and len(times) > 1:
        # Nearest source frame at each target timestamp: resampling to a fixed rate.
        t0, t_end = times[0], times[-1]
        targets = np.arange(t0, t_end + 1e-6, 1.0 / spec.fps)
        src = np.searchsorted(np.asarray(times), targets, side="left").clip(0, len(frames) - 1)
        frames = [frames[i] for i in src]
    if len(frames) < spec.frames:
        raise MediaError(f"video has {len(frames)} frames at {spec.fps} fps, shorter than one clip "
                         f"of {spec.frames}")
    n_clips = min(spec.clips_per_video, len(frames) // spec.frames)
    clips = []
    for c in range(n_clips):
        chunk = frames[c * spec.frames:(c + 1) * spec.frames]
        clips.append(np.stack([_to_array(resize_center_crop(f, spec.size), spec.channels) for f in chunk]))
    return clips


def encode_mp4(frames: np.ndarray, fps: int = 8, crf: int = 18) -> bytes:
    """(T, H, W) gray or (T, H, W, 3) RGB uint8 -> H.264 MP4 bytes (yuv420p: H, W even)."""
    import av

    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {h}x{w}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Bit-identical output run to run: x264's macroblock-tree rate control was measured to
        # vary between identical encodes of these small clips (PyAV 18), so it is off; one
        # thread keeps the result independent of the machine's core count.
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_mp4(data: bytes, gray: bool = False) -> np.ndarray:
    """Video bytes -> every frame at the source rate and size: (T, H, W, 3) uint8 RGB, or
    (T, H, W) when gray (the mean of RGB). MediaError when undecodable."""
    frames, _ = _decode_frames(data)
    if not frames:
        raise MediaError("video has no decodable frames")
    out = np.stack([np.asarray(f.convert("RGB"), dtype=np.uint8) for f in frames])
    return np.round(out.mean(-1)).astype(np.uint8) if gray else out
