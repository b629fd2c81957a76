"""No tiny file costs gigabytes: decoding costs memory in proportion to the output, and a
file over the byte budget is refused from its listed size, before a byte of it is read.

Each path runs in a fresh process (tests/hostile_files.py) whose peak resident growth
after a warm-up is read from the kernel; its address space is capped 1 GiB above the warm
state, so the code this replaced (which resized a 1 x 400,000 PNG's whole image before
cropping: gigabytes) fails here with MemoryError rows instead of taking the machine."""
import os

import numpy as np
import pytest
from PIL import Image

from hostile_files import GROWTH_LIMIT_MB, SIZE, run_all
from nestgen.data.media import ClipSpec, MediaLimitError, resize_center_crop
from nestgen.data.raw_files import list_raw_files, load_item, load_raw_split
from pipelines.config import TokenizeConfig

pytestmark = pytest.mark.timeout(600)

IMAGES = ["1x400000.png", "400000x2.png", "1x4000000.png", "4000000x2.png"]
VIDEOS = ["2x8000.mp4", "8000x2.mp4", "16x4096.mp4"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("hostile_files"), n=4_000_000)


def _runs(hostile, path):
    runs = [r for r in hostile["runs"] if r["path"] == path]
    for r in runs:
        assert "crashed" not in r, r
        assert r["growth_mb"] <= GROWTH_LIMIT_MB, f"{r['files']}: the process grew {r['growth_mb']} MB"
    return {row["file"]: row for r in runs for row in r["rows"]}


def test_extreme_aspect_ratios_and_thin_videos_decode_within_the_memory_cap(hostile):
    """1 x N and N x 2 PNGs of a few kB, and thin MP4s, each decoded from its bytes in its own
    process: the centre square at the output size, and no process grows past the limit."""
    rows = _runs(hostile, "decoders")
    assert set(rows) == set(IMAGES + VIDEOS)
    for name in IMAGES:
        assert rows[name] == {"file": name, "shapes": [[SIZE, SIZE, 3]]}
    for name in VIDEOS:
        assert rows[name] == {"file": name, "shapes": [[8, SIZE, SIZE, 3]]}


def test_the_tokenize_step_turns_each_hostile_file_into_a_row_or_a_reason(hostile):
    """Through the tokenize actor (listing, byte budget, streaming, tokenizer): every
    file is a row with tokens, or a failure naming the budget and the size its storage
    lists; the 2 GiB + 1 sparse files are refused unread (reading one would have grown
    the process by gigabytes)."""
    rows = _runs(hostile, "tokenize")
    budget = TokenizeConfig().max_file_bytes
    assert set(rows) == set(IMAGES + VIDEOS) | {"over-budget.png", "over-budget.mp4"}
    for name in IMAGES:
        assert rows[name]["tokens"] == 16                      # the image tokenizer's 4 x 4 grid
    for name in VIDEOS:
        assert rows[name]["tokens"] == 32 and rows[name]["id"].endswith("#clip0")   # 2 x 4 x 4
    for name in ("over-budget.png", "over-budget.mp4"):
        assert rows[name]["error"] == f"file is {budget + 1} bytes, over the budget of {budget} bytes"


def test_a_file_over_the_byte_budget_is_refused_from_its_listing_unread(tmp_path):
    """A real 3 GiB sparse file: refused by its listed size, never opened for reading (its
    access time stays where the test set it, while the good file next to it is read)."""
    folder = tmp_path / "raw" / "train" / "x"
    folder.mkdir(parents=True)
    Image.new("RGB", (20, 12), (10, 200, 30)).save(folder / "good.png")
    big = folder / "big.png"
    with open(big, "wb") as f:
        f.truncate(3 * 1024**3)
    for p in (big, folder / "good.png"):
        os.utime(p, (1, p.stat().st_mtime))     # relatime records the next read after this
    limits = TokenizeConfig().video_limits()
    item = next(it for it in list_raw_files(str(tmp_path / "raw"))[0] if it["uri"].endswith("big.png"))
    with pytest.raises(MediaLimitError, match=f"^file is {3 * 1024**3} bytes, over the budget of 10000 bytes$"):
        load_item(item, ClipSpec(size=8), 10**6, limits, 10_000)
    arrays, labels, failed = load_raw_split(str(tmp_path / "raw"), "train", "image", ClipSpec(size=8), 10**6,
                                            limits, max_file_bytes=10_000)
    assert arrays.shape == (1, 8, 8, 3) and np.all(arrays[0] == (10, 200, 30))
    assert failed == [{"source_uri": str(big), "reason": f"file is {3 * 1024**3} bytes, over the budget of 10000 bytes"}]
    if (folder / "good.png").stat().st_atime != 1:       # this filesystem records reads
        assert big.stat().st_atime == 1


def test_the_centre_square_is_what_resizing_the_short_side_and_cropping_gives():
    """The output is the centre crop of the short side resized to `size`, as before the
    change; only the square is resampled now. On a smooth image the two differ by at most
    the rounding of the resampling passes (measured: 0 to 2 gray levels)."""
    rng = np.random.default_rng(0)
    for w, h, size in [(40, 60, 32), (320, 240, 64), (100, 37, 16), (33, 97, 128), (64, 64, 32)]:
        noise = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img = noise.resize((w // 4 + 1, h // 4 + 1)).resize((w, h), Image.BICUBIC)     # smooth
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        whole = img.resize((nw, nh), Image.BICUBIC if scale > 1 else Image.LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        want = np.asarray(whole.crop((left, top, left + size, top + size)), dtype=int)
        got = np.asarray(resize_center_crop(img, size), dtype=int)
        assert got.shape == want.shape and np.abs(got - want).max() <= 3, (w, h, size)
