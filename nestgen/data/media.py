"""Image and video files <-> uint8 arrays, decoded within budgets.

Decoding for training data: images through Pillow (the centre square of the short side, resized);
videos through PyAV (resample to a target fps, fixed clip length, resize + center crop,
several clips per long video). Every failure is a `MediaError` with a reason that a
manifest can record. Plus the one H.264 MP4 encoder and its plain decoder, used by the
moving-digits data, evaluation sample videos and the server's MP4 responses.

The bytes may be hostile (a request's conditioning clip, a file in someone's data set), so
the work per file is bounded before decoding starts: an image's size is read from its
header and checked against a pixel budget; a video is opened with the one demuxer that
its kind names (never FFmpeg's format probing, which would hand an `ffconcat` text or an
HLS playlist to demuxers that open other files and URLs), its stream header is checked
against `VideoLimits`, and decoding stops as soon as the frames the clips need are known.
A file is streamed to the decoder rather than read whole, and the centre square is resampled
straight from the source, so an extreme aspect ratio costs no more than a square image.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

# The Pillow formats an image file may hold, whatever its extension says (real data sets
# have PNGs named .jpg); no other Pillow plugin (EPS would run Ghostscript) ever sees the bytes.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# The FFmpeg demuxer that opens each video extension: the content must match its name.
VIDEO_DEMUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska",
                  ".webm": "matroska"}
VIDEO_EXTENSIONS = tuple(VIDEO_DEMUXERS)


class MediaError(ValueError):
    """A file that cannot be turned into pixels; the message is the reason."""


class MediaLimitError(MediaError):
    """A file over a budget. The message names the budget and what the file's header claims
    (never a decoder's text), so a service may show it to the client that sent the file."""


def media_kind(path: str) -> str | None:
    low = path.lower()
    if low.endswith(IMAGE_EXTENSIONS):
        return "image"
    if low.endswith(VIDEO_EXTENSIONS):
        return "video"
    return None


def video_demuxer(path: str) -> str:
    """The demuxer for a video file, by its extension."""
    low = path.lower()
    return next(d for ext, d in VIDEO_DEMUXERS.items() if low.endswith(ext))


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The centre square of the short side, resized to size x size (bicubic up, Lanczos down).

    The output grid is that of resizing the short side to `size` and cropping the middle
    (offsets rounded down to whole output pixels), but only the square is resampled,
    straight from the source (`resize`'s box; the filter still reads the source pixels
    around it). So the work and memory are those of the output whatever the aspect ratio:
    resizing the whole image first, as this once did, turned a 469-byte 1 x 400,000 PNG into
    a 64 x 25,600,000 intermediate (gigabytes)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))    # the resized whole image
    left, top = (nw - size) // 2, (nh - size) // 2                         # the crop in it
    box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
    return img.resize((size, size), Image.BICUBIC if scale > 1 else Image.LANCZOS, box=box)


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def _readable(src: bytes | BinaryIO) -> BinaryIO:
    """Encoded bytes, or an open binary file that decoders read as far as they need."""
    return io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src


def load_image(src: bytes | BinaryIO, size: int, channels: int, max_pixels: int) -> np.ndarray:
    """Encoded image bytes or an open binary file -> (size, size, channels) uint8. Images
    whose header claims more than max_pixels are refused before their pixels are decoded."""
    try:
        with Image.open(_readable(src), formats=IMAGE_FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise MediaLimitError(f"image is {w}x{h} = {w * h} pixels, over the budget of {max_pixels}")
            # A JPEG decodes at 1/2, 1/4 or 1/8 scale when that still leaves twice the output
            # size (Pillow's thumbnail gap): a 40-megapixel photo then costs a fraction of its
            # full size, at no visible cost after the final resize. Other formats ignore it.
            img.draft(None, (2 * size, 2 * size))
            img.load()
            return _to_array(resize_center_crop(img, size), channels)
    except MediaError:
        raise
    except Image.UnidentifiedImageError:         # its message names the file object's memory address
        raise MediaError(f"undecodable image: not a {'/'.join(IMAGE_FORMATS)} image") from None
    except Image.DecompressionBombError as e:   # Pillow's own limit, checked inside open()
        raise MediaLimitError(f"image over the pixel budget of {max_pixels}: {e}") from None
    except Exception as e:  # noqa: BLE001 - hostile bytes make decoders raise anything; the file is bad
        raise MediaError(f"undecodable image: {type(e).__name__}: {e}") from None


@dataclass(frozen=True)
class ClipSpec:
    frames: int = 16            # frames per clip
    fps: float = 8.0            # frames are resampled to this rate (0 keeps the source rate)
    size: int = 64              # output H = W
    channels: int = 3
    clips_per_video: int = 1    # up to this many non-overlapping clips from the window's start
    start: float = 0.0          # the window clips are cut from, in seconds from the first frame
    end: float = math.inf       # (an index row's start/end; the default is the whole video)


@dataclass(frozen=True)
class VideoLimits:
    """A video's budget, checked against its stream header before any frame is decoded, and
    again while decoding (a header can lie, or leave the frame count out)."""
    max_pixels: int             # width x height of one frame (also the decoder's own cap)
    max_frames: int             # frames the header claims, and frames decoded
    max_seconds: float          # the duration the header claims


def _check_header(container, stream, limits: VideoLimits) -> None:
    w, h = stream.codec_context.width, stream.codec_context.height
    if w * h == 0:
        raise MediaError("video stream header has no frame size")
    if w * h > limits.max_pixels:
        raise MediaLimitError(f"video frames are {w}x{h} = {w * h} pixels, over the budget of {limits.max_pixels}")
    if stream.frames > limits.max_frames:
        raise MediaLimitError(f"video has {stream.frames} frames, over the budget of {limits.max_frames}")
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    else:
        seconds = (container.duration or 0) / 1_000_000      # AV_TIME_BASE units
    if seconds > limits.max_seconds:
        raise MediaLimitError(f"video lasts {seconds:.1f} s, over the budget of {limits.max_seconds} s")


def _video_frames(src: bytes | BinaryIO, demuxer: str, limits: VideoLimits | None):
    """Yield (RGB image, seconds) per frame in decoding order, within `limits` (None: only
    for files this project wrote). The caller may stop early; the container is closed then.
    An open file is streamed: FFmpeg reads (and seeks) only as far as those frames need."""
    import av  # PyAV: imported here so that image-only users never load it

    # Opening decodes a frame or two to fill in stream parameters: capped too (twice the
    # budget: frame buffers count rows padded to the stride alignment).
    options = {} if limits is None else {"max_pixels": str(min(2 * limits.max_pixels, 2**31 - 1))}
    try:
        with av.open(_readable(src), format=demuxer, options=options) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            if limits is not None:
                _check_header(container, stream, limits)
                # FFmpeg's own cap on every frame buffer it allocates: a parameter set later in
                # the bitstream can claim a bigger frame than the header showed. The cap counts
                # rows padded to the stride alignment (up to 64 pixels), so frames of the
                # header's size must pass it padded; the budget itself is held on each frame.
                w, h = stream.codec_context.width, stream.codec_context.height
                cap = max(-(-w // 64) * 64 * h, limits.max_pixels)
                stream.codec_context.options = {"max_pixels": str(min(cap, 2**31 - 1))}
            rate = float(stream.average_rate or 25)
            for n, frame in enumerate(container.decode(stream)):
                if limits is not None:
                    if n >= limits.max_frames:
                        raise MediaLimitError(f"video decodes to more than {limits.max_frames} frames")
                    if frame.width * frame.height > limits.max_pixels:
                        raise MediaLimitError(f"video has a {frame.width}x{frame.height} frame, over the "
                                              f"budget of {limits.max_pixels} pixels")
                yield frame.to_image(), float(frame.time) if frame.time is not None else n / rate
    except MediaError:
        raise
    except Exception as e:  # noqa: BLE001 - hostile bytes make decoders raise anything; the file is bad
        raise MediaError(f"undecodable video: {type(e).__name__}: {e}") from None


def read_video(src: bytes | BinaryIO, spec: ClipSpec, limits: VideoLimits, demuxer: str
               ) -> tuple[list[np.ndarray], int]:
    """(up to spec.frames * spec.clips_per_video frames from the start of the window
    [spec.start, spec.end) seconds after the first frame, resampled to spec.fps and resized to
    (size, size, channels) uint8; the number of frames decoded to get them).

    Resampling takes, for each target time t0 + k/fps (t0: the window's first frame), the
    first source frame at or after it; decoding stops as soon as the last frame wanted is
    known or the window ends, so a long video costs only what precedes its clips (a window
    is reached by decoding from the start, within the frame budget). Only the frames kept
    are held in memory."""
    want = spec.frames * spec.clips_per_video
    out: list[np.ndarray] = []
    decoded = 0
    first, t0, step = None, None, 1.0 / spec.fps if spec.fps > 0 else 0.0
    for img, t in _video_frames(src, demuxer, limits):
        decoded += 1
        first = t if first is None else first
        if t - first < spec.start - 1e-6:          # before the window (1 us absorbs time-base rounding)
            continue
        if t - first >= spec.end - 1e-6:
            break
        t0 = t if t0 is None else t0
        if spec.fps > 0:    # the target times this frame is the first at or after
            k = len(out)
            while k < want and t0 + k * step <= t + 1e-6:   # 1 us absorbs time-base rounding
                k += 1
            copies = k - len(out)
        else:
            copies = 1
        if copies:
            out.extend([_to_array(resize_center_crop(img, spec.size), spec.channels)] * copies)
        if len(out) == want:
            break
    return out, decoded


def load_video_clips(src: bytes | BinaryIO, spec: ClipSpec, limits: VideoLimits, demuxer: str) -> list[np.ndarray]:
    """Encoded video bytes or an open binary file -> list of (frames, size, size, channels) uint8 clips."""
    frames, decoded = read_video(src, spec, limits, demuxer)
    if not decoded:
        raise MediaError("video has no decodable frames")
    if not frames:
        raise MediaError(f"video has no frames in its window {spec.start:g}-{spec.end:g} s")
    if len(frames) < spec.frames:
        raise MediaError(f"video has {len(frames)} frames at {spec.fps} fps, shorter than one clip "
                         f"of {spec.frames}")
    return [np.stack(frames[c * spec.frames:(c + 1) * spec.frames]) for c in range(len(frames) // spec.frames)]


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
    """MP4 bytes this project wrote -> every frame at the source rate and size: (T, H, W, 3)
    uint8 RGB, or (T, H, W) when gray (the mean of RGB). MediaError when undecodable. No
    budget: bytes from elsewhere go through `read_video` with `VideoLimits`."""
    frames = [np.asarray(img, dtype=np.uint8) for img, _ in _video_frames(data, "mp4", None)]
    if not frames:
        raise MediaError("video has no decodable frames")
    out = np.stack(frames)
    return np.round(out.mean(-1)).astype(np.uint8) if gray else out
