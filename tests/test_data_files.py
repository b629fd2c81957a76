"""Digit PNGs laid out like ImageNet and moving-digit MP4s laid out like UCF101."""
import io

import av
import fsspec
import numpy as np
import pytest
from PIL import Image

from nestgen.data.digits import load_digit_tokens
from nestgen.data.image_files import CLASS_NAMES, digit_images, read_image_folder, write_digit_images
from nestgen.data.media import decode_mp4, encode_mp4
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
