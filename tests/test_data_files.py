"""Digit PNGs laid out like ImageNet, moving-digit MP4s laid out like UCF101, and decoding
hostile media within budgets."""
import io

import av
import fsspec
import numpy as np
import pytest
from PIL import Image

from nestgen.data.digits import load_digit_tokens
from nestgen.data.image_files import CLASS_NAMES, digit_images, read_image_folder, write_digit_images
from nestgen.data.media import (ClipSpec, MediaError, MediaLimitError, VideoLimits, decode_mp4, encode_mp4,
                                load_image, load_video_clips, read_video)
from nestgen.data.moving_digits import make_moving_digit_clips, read_video_folder, write_moving_digits

# ---------------------------------------------------------------- digit PNGs


def test_write_digit_images_layout_counts_and_split(tmp_path):
    counts = write_digit_images(str(tmp_path / "digits"), size=32, holdout_fraction=0.1, seed=0)
    assert counts["train"] + counts["val"] == 1797 and counts["val"] == 180
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["train", "val"]
    for split in ("train", "val"):
        folders = sorted(p.name for p in (tmp_path / "digits" / split).iterdir())
        assert folders == CLASS_NAMES == [str(i) for i in range(10)]
        for c in CLASS_NAMES:
            files = list((tmp_path / "digits" / split / c).glob("*.png"))
            assert len(files) == counts["per_class"][split][c]
    one = next((tmp_path / "digits" / "train" / "3").glob("*.png"))
    img = Image.open(one)
    assert img.mode == "RGB" and img.size == (32, 32)
    # Same held-out digits as the token pipeline (load_digit_tokens) for the same seed.
    _, (_, hold_labels) = load_digit_tokens(holdout_fraction=0.1, seed=0)
    val_per_class = np.bincount(hold_labels.numpy(), minlength=10)
    assert [counts["per_class"]["val"][c] for c in CLASS_NAMES] == val_per_class.tolist()
    # Read back: pixels equal the in-memory digits at the file's id.
    images, labels, ids = read_image_folder(str(tmp_path / "digits"), "val")
    ref, ref_labels = digit_images(32)
    idx = [int(i) for i in ids]
    assert images.shape == (180, 32, 32, 3)
    assert np.array_equal(images, ref[idx]) and np.array_equal(labels, ref_labels[idx])


def test_write_digit_images_through_fsspec_urls(tmp_path):
    for url in (f"file://{tmp_path}/d16", "memory://nestgen-tests/digits16"):
        counts = write_digit_images(url, size=16, holdout_fraction=0.2, seed=1)
        fs, root = fsspec.core.url_to_fs(url)
        assert len(fs.glob(f"{root}/train/*/*.png")) == counts["train"] == 1797 - 359
        assert len(fs.glob(f"{root}/val/*/*.png")) == counts["val"] == 359
        images, labels, _ = read_image_folder(url, "train")
        assert images.shape == (counts["train"], 16, 16, 3) and set(labels.tolist()) == set(range(10))


# ---------------------------------------------------------------- moving digits


def test_make_moving_digit_clips_is_deterministic_and_moves():
    clips, labels = make_moving_digit_clips(6, frames=16, size=64, seed=3)
    assert clips.shape == (6, 16, 64, 64) and clips.dtype == np.uint8
    assert labels.shape == (6,) and labels.min() >= 0 and labels.max() <= 9
    again, labels_again = make_moving_digit_clips(6, frames=16, size=64, seed=3)
    assert np.array_equal(clips, again) and np.array_equal(labels, labels_again)
    other, _ = make_moving_digit_clips(6, frames=16, size=64, seed=4)
    assert not np.array_equal(clips, other)
    assert all((clip.reshape(16, -1).max(axis=1) > 128).all() for clip in clips)   # a digit in every frame
    assert all(not np.array_equal(clip[0], clip[-1]) for clip in clips)            # and it moved
    fixed, fixed_labels = make_moving_digit_clips(3, frames=4, size=32, labels=[7, 7, 2], seed=0)
    assert fixed_labels.tolist() == [7, 7, 2]
    two, _ = make_moving_digit_clips(6, frames=16, size=64, digits_per_clip=2, seed=3)
    assert (two > 64).sum() > (clips > 64).sum()                                   # more ink


def test_mp4_round_trip_is_h264_yuv420p_and_close_to_the_source():
    clips, _ = make_moving_digit_clips(1, frames=16, size=32, seed=0)
    data = encode_mp4(clips[0], fps=8)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (32, 32)
    frames = decode_mp4(data, gray=True)
    assert frames.shape == clips[0].shape
    assert np.abs(frames.astype(int) - clips[0]).mean() < 3.0
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros((2, 31, 32), np.uint8))
    with pytest.raises(ValueError, match="even"):
        write_moving_digits("memory://nestgen-tests/odd", size=33)


def _decoded(url: str) -> dict:
    """{relative path: decoded frames} of every MP4 under url, decoded with PyAV."""
    fs, root = fsspec.core.url_to_fs(url)
    out = {}
    for p in sorted(fs.glob(f"{root}/*/*/*.mp4")):
        with fs.open(p, "rb") as f, av.open(f) as container:
            out[p[len(root) + 1:]] = np.stack([fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)])
    return out


def test_write_moving_digits_layout_decoding_and_seeds(tmp_path):
    kw = dict(num_clips_per_class=2, frames=16, size=32, fps=8, digits_per_clip=2, holdout_fraction=0.5)
    counts = write_moving_digits(str(tmp_path / "a"), seed=0, **kw)
    assert counts["train"] == counts["val"] == 10 and counts["per_class"] == {"train": 1, "val": 1}
    for split in ("train", "val"):
        assert sorted(p.name for p in (tmp_path / "a" / split).iterdir()) == CLASS_NAMES
    a = _decoded(str(tmp_path / "a"))
    assert len(a) == 20 and all(v.shape == (16, 32, 32, 3) for v in a.values())
    assert all(k.split("/")[0] in ("train", "val") and k.split("/")[1] in CLASS_NAMES for k in a)
    clips, labels, ids = read_video_folder(str(tmp_path / "a"), "train")
    assert clips.shape == (10, 16, 32, 32) and labels.tolist() == list(range(10))
    # Same seed -> identical decoded frames (also through another fsspec filesystem);
    # another seed -> different clips.
    write_moving_digits("memory://nestgen-tests/moving-b", seed=0, **kw)
    b = _decoded("memory://nestgen-tests/moving-b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    write_moving_digits(str(tmp_path / "c"), seed=1, **kw)
    c = _decoded(str(tmp_path / "c"))
    assert a.keys() == c.keys() and not any(np.array_equal(a[k], c[k]) for k in a)


# ---------------------------------------------------------------- hostile media, bounded work

ROOMY = VideoLimits(max_pixels=10**6, max_frames=10**4, max_seconds=3600)


def test_images_over_the_pixel_budget_are_refused_from_the_header(png_claiming):
    bomb = png_claiming(100_000, 100_000)
    assert len(bomb) < 150
    with pytest.raises(Image.DecompressionBombError):      # what Pillow alone raises: not an OSError
        Image.open(io.BytesIO(bomb))
    with pytest.raises(MediaLimitError, match="pixel budget of 1000000"):
        load_image(bomb, 32, 3, max_pixels=10**6)
    # Under Pillow's own limit but over ours: refused before its pixels are decoded (they
    # would be a truncated stream, an OSError, if decoding were tried).
    with pytest.raises(MediaLimitError, match="20000x1000 = 20000000 pixels, over the budget of 1000000"):
        load_image(png_claiming(20_000, 1_000), 32, 3, max_pixels=10**6)
    with pytest.raises(MediaError, match="undecodable image"):
        load_image(png_claiming(200, 100), 32, 3, max_pixels=10**6)
    good = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 7, np.uint8)).save(good, format="PNG")
    assert load_image(good.getvalue(), 32, 3, max_pixels=40 * 60).shape == (32, 32, 3)
    with pytest.raises(MediaError, match="undecodable image"):
        load_image(good.getvalue()[:60], 32, 3, max_pixels=10**6)           # truncated
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(MediaError, match="undecodable image"):              # no Ghostscript behind Pillow's back
        load_image(eps, 32, 3, max_pixels=10**6)
    # the reason lands in the manifest: the same for the same file in every run (no object address)
    reasons = set()
    for _ in range(2):
        with pytest.raises(MediaError, match="undecodable image: not a PNG/JPEG") as e:
            load_image(io.BufferedReader(io.BytesIO(b"not an image at all")), 32, 3, max_pixels=10**6)
        reasons.add(str(e.value))
    assert len(reasons) == 1 and " at 0x" not in reasons.pop()


def test_a_long_video_is_decoded_only_as_far_as_its_clips_need():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (240, 32, 32, 3), dtype=np.uint8)
    data = encode_mp4(source, fps=24)
    frames, decoded = read_video(data, ClipSpec(frames=8, fps=0, size=32), ROOMY, "mp4")
    assert decoded == 8 and np.array_equal(np.stack(frames), decode_mp4(data)[:8])
    # 2 clips of 8 frames at 8 fps from 24 fps: targets every third frame, the last at frame 45.
    frames, decoded = read_video(data, ClipSpec(frames=8, fps=8, size=32, clips_per_video=2), ROOMY, "mp4")
    assert decoded == 46 and np.array_equal(np.stack(frames), decode_mp4(data)[0:46:3])
    clips = load_video_clips(data, ClipSpec(frames=8, fps=8, size=32, clips_per_video=2), ROOMY, "mp4")
    assert [c.shape for c in clips] == [(8, 32, 32, 3)] * 2
    # The header's frame count and duration are budgets too.
    with pytest.raises(MediaLimitError, match="video has 240 frames, over the budget of 100"):
        read_video(data, ClipSpec(frames=8, fps=0, size=32), VideoLimits(10**6, 100, 3600), "mp4")
    with pytest.raises(MediaLimitError, match="video lasts 10.0 s, over the budget of 5"):
        read_video(data, ClipSpec(frames=8, fps=0, size=32), VideoLimits(10**6, 10**4, 5), "mp4")


def test_video_headers_are_checked_before_any_frame_is_decoded():
    data = bytearray(encode_mp4(np.zeros((8, 48, 64, 3), np.uint8)))
    # Zero the coded frames, keep the header: decoding would fail, so a budget refusal proves
    # that the header was checked first.
    at = data.index(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at - 4 + size] = bytes(size - 8)
    spec = ClipSpec(frames=8, fps=0, size=32)
    with pytest.raises(MediaLimitError, match="video frames are 64x48 = 3072 pixels, over the budget of 3000"):
        read_video(bytes(data), spec, VideoLimits(3000, 100, 60), "mp4")
    with pytest.raises(MediaError, match="undecodable video"):
        read_video(bytes(data), spec, VideoLimits(3072, 100, 60), "mp4")


def test_videos_open_only_with_the_demuxer_their_kind_names(tmp_path, monkeypatch):
    """FFmpeg's probing would hand an ffconcat text to the concat demuxer, which opens the
    files it names (relative to the working directory) and decodes them."""
    monkeypatch.chdir(tmp_path)
    clip = np.full((8, 32, 32, 3), 200, np.uint8)
    (tmp_path / "local.mp4").write_bytes(encode_mp4(clip))
    playlist = b"ffconcat version 1.0\nfile 'local.mp4'\n"
    spec = ClipSpec(frames=8, fps=0, size=32)
    with av.open(io.BytesIO(playlist)) as probed:                     # the hole, with probing
        assert probed.format.name == "concat"
    for demuxer in ("mp4", "mov", "matroska", "avi"):
        with pytest.raises(MediaError, match="undecodable video"):
            read_video(playlist, spec, ROOMY, demuxer)
    with pytest.raises(MediaError, match="undecodable video"):        # content must match the kind
        read_video((tmp_path / "local.mp4").read_bytes(), spec, ROOMY, "matroska")
    assert read_video((tmp_path / "local.mp4").read_bytes(), spec, ROOMY, "mp4")[1] == 8


def _h264(frames: np.ndarray) -> bytes:
    """An H.264 elementary stream with its parameter sets in-band (at every keyframe)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"x264-params": "repeat-headers=1", "preset": "ultrafast"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def test_frames_growing_past_the_header_are_held_to_the_budget():
    """An MP4 whose header (and first frames) say 32x32 and whose bitstream switches to
    512x512: the decoder never allocates a frame over the budget."""
    es = _h264(np.zeros((4, 32, 32, 3), np.uint8)) + _h264(np.full((4, 512, 512, 3), 100, np.uint8))
    out = io.BytesIO()
    with av.open(io.BytesIO(es), format="h264") as src, av.open(out, "w", format="mp4") as dst:
        o = dst.add_stream_from_template(src.streams.video[0])
        for i, p in enumerate(p for p in src.demux(video=0) if p.size):
            p.stream, p.pts, p.dts = o, i, i
            dst.mux(p)
    data = out.getvalue()
    with av.open(io.BytesIO(data), format="mp4") as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (32, 32)
    spec = ClipSpec(frames=8, fps=0, size=32)
    with pytest.raises(MediaError, match="undecodable video"):
        read_video(data, spec, VideoLimits(300 * 300, 100, 10**6), "mp4")
    assert read_video(data, spec, VideoLimits(512 * 512, 100, 10**6), "mp4")[1] == 8
