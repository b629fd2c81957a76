"""The Ray tokenization step end to end: real files -> Ray Data -> Parquet shards + manifest."""
import time
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from nestgen.data.shards import load_split_tokens, read_manifest, shard_urls
from nestgen.tokenizers import images_to_pixels, load_tokenizer
from pipelines.config import TokenizeConfig
from pipelines.tokenize import tokenize_to_shards

pytestmark = pytest.mark.timeout(600)


def _count(root, pattern):
    return len(list(root.glob(pattern)))


def test_images_to_shards_exact_tokens_and_idempotent(ray_local, digits_png, image_tokenizer, tmp_path):
    tok_path, measured_mse = image_tokenizer
    out = tmp_path / "shards"
    m = tokenize_to_shards(str(digits_png), str(out), str(tok_path), TokenizeConfig(batch_size=128))
    n_train, n_val = _count(digits_png, "train/*/*.png"), _count(digits_png, "val/*/*.png")
    assert m["splits"]["train"]["rows"] == n_train and m["splits"]["val"]["rows"] == n_val
    assert sum(m["splits"]["train"]["per_label"].values()) == n_train
    assert m["label_map"] == {str(c): c for c in range(10)} or len(m["label_map"]) == 10
    assert m["failed"] == [] and m["grid_shape"] == [4, 4]

    # Rows carry labels consistent with their folders and the exact tokens of the tokenizer.
    tok = load_tokenizer(str(tok_path))
    from PIL import Image
    for split in ("train", "val"):
        rows = pq.ParquetDataset([u for u in shard_urls(str(out), split)]).read().to_pylist()
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows[:50]:
            assert m["label_map"][r["label_name"]] == r["label"]
            assert r["tokenizer_hash"] == m["tokenizer"]["hash"] and r["grid_shape"] == [4, 4]
            img = np.asarray(Image.open(r["source_uri"]).convert("RGB"))[None]
            assert r["tokens"] == tok.encode(images_to_pixels(img)).reshape(-1).tolist()

    tokens, labels, _ = load_split_tokens(str(out), "train")
    assert tokens.shape == (n_train, 16) and labels.shape == (n_train,)
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 32
    # decode(encode(x)) reconstructs the inputs with the tokenizer's measured error.
    from nestgen.data.image_files import read_image_folder
    images, _, ids = read_image_folder(str(digits_png), "train")
    by_id = {f"train/{r['label_name']}/{r['id'].rsplit('/', 1)[-1]}": r for r in
             pq.ParquetDataset(shard_urls(str(out), "train")).read().to_pylist()}
    order = [by_id[f"train/{lbl}/{i}.png"]["tokens"] for i, lbl in
             zip(ids, read_image_folder(str(digits_png), "train")[1])]
    recon = tok.decode(torch.tensor(order).view(-1, 4, 4))
    mse = float(((recon - images_to_pixels(images)) ** 2).mean())
    assert mse == pytest.approx(measured_mse, rel=1e-3)

    # Same inputs + same tokenizer: nothing is rewritten, no rows duplicated.
    files_before = sorted(p.name for p in out.rglob("*.parquet"))
    again = tokenize_to_shards(str(digits_png), str(out), str(tok_path), TokenizeConfig(batch_size=128))
    assert again == m
    assert sorted(p.name for p in out.rglob("*.parquet")) == files_before
    assert load_split_tokens(str(out), "train")[0].shape[0] == n_train


def test_bad_files_are_reported_and_skipped(ray_local, digits_png, moving_digits_mp4, image_tokenizer,
                                            video_tokenizer, png_claiming, tmp_path):
    """Every bad file is a manifest failure with its reason, and the step tokenizes every good
    one: corrupt, empty, truncated, dangling, a decompression bomb (Pillow raises no OSError
    for it), a header over the pixel budget, and videos that are over the budgets, not what
    their extension says, or an ffconcat text that FFmpeg's probing would have followed."""
    raw = tmp_path / "raw_images"
    shutil.copytree(digits_png / "val", raw / "val")
    real_png = next((raw / "val").rglob("*.png")).read_bytes()
    (raw / "val" / "3" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (raw / "val" / "3" / "empty.jpg").write_bytes(b"")
    (raw / "val" / "3" / "truncated.png").write_bytes(real_png[:len(real_png) // 2])
    (raw / "val" / "4" / "broken.png").symlink_to(tmp_path / "missing.png")
    (raw / "val" / "4" / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (raw / "val" / "5" / "wide.png").write_bytes(png_claiming(20_000, 1_000))
    good = _count(digits_png, "val/*/*.png")
    m = tokenize_to_shards(str(raw), str(tmp_path / "out_img"), str(image_tokenizer[0]),
                           TokenizeConfig(max_image_pixels=10**6))
    reasons = {f["source_uri"].rsplit("/", 1)[-1]: f["reason"] for f in m["failed"]}
    assert set(reasons) == {"corrupt.png", "empty.jpg", "truncated.png", "broken.png", "bomb.png", "wide.png"}
    assert reasons["corrupt.png"].startswith("undecodable image")
    assert reasons["truncated.png"].startswith("undecodable image")
    assert reasons["broken.png"].startswith("unreadable file")
    assert reasons["bomb.png"].startswith("image over the pixel budget of 1000000")
    assert reasons["wide.png"] == "image is 20000x1000 = 20000000 pixels, over the budget of 1000000"
    assert m["splits"]["val"]["rows"] == good

    from nestgen.data.media import encode_mp4
    vraw = tmp_path / "raw_video"
    shutil.copytree(moving_digits_mp4, vraw)
    real = next((vraw / "train").rglob("*.mp4"))
    (vraw / "train" / "1" / "truncated.mp4").write_bytes(real.read_bytes()[:300])
    (vraw / "train" / "1" / "garbage.mp4").write_bytes(b"\x00" * 2048)
    (vraw / "train" / "1" / "playlist.mp4").write_bytes(f"ffconcat version 1.0\nfile '{real.name}'\n".encode())
    (vraw / "train" / "1" / "not-webm.webm").write_bytes(real.read_bytes())
    short = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    (vraw / "train" / "2" / "short.mp4").write_bytes(encode_mp4(short, fps=8))
    (vraw / "train" / "2" / "huge.mp4").write_bytes(encode_mp4(np.zeros((8, 64, 64, 3), np.uint8), fps=8))
    (vraw / "train" / "2" / "long.mp4").write_bytes(encode_mp4(np.zeros((200, 32, 32, 3), np.uint8), fps=8))
    good_v = {s: _count(moving_digits_mp4, f"{s}/*/*.mp4") for s in ("train", "val")}
    good_v["train"] += 1                                       # long.mp4: its first clip
    mv = tokenize_to_shards(str(vraw), str(tmp_path / "out_vid"), str(video_tokenizer),
                            TokenizeConfig(max_video_pixels=32 * 32))
    vreasons = {f["source_uri"].rsplit("/", 1)[-1]: f["reason"] for f in mv["failed"]}
    assert set(vreasons) == {"truncated.mp4", "garbage.mp4", "playlist.mp4", "not-webm.webm", "short.mp4",
                             "huge.mp4"}
    assert "shorter than one clip" in vreasons["short.mp4"]
    assert vreasons["huge.mp4"] == "video frames are 64x64 = 4096 pixels, over the budget of 1024"
    assert all(r.startswith(("undecodable video", "video has no decodable frames")) for k, r in vreasons.items()
               if k not in ("short.mp4", "huge.mp4"))
    assert {s: mv["splits"][s]["rows"] for s in good_v} == good_v
    tokens, labels, _ = load_split_tokens(str(tmp_path / "out_vid"), "train")
    assert tokens.shape == (good_v["train"], 2 * 4 * 4) and mv["grid_shape"] == [2, 4, 4]


def test_tokenize_on_gcs_emulator(ray_local, gcs_emulator, digits_png, image_tokenizer):
    import gcsfs
    fs = gcsfs.GCSFileSystem(token="anon")
    # One file at a time: the emulator answers a sequential upload in milliseconds but
    # stalls for seconds under gcsfs's concurrent batch upload (measured 110 s for 180 files).
    for f in sorted((digits_png / "val").rglob("*.png")):
        fs.pipe_file(f"{gcs_emulator}/raw/val/{f.relative_to(digits_png / 'val')}", f.read_bytes())
    src, dst = f"gs://{gcs_emulator}/raw", f"gs://{gcs_emulator}/shards"
    m = tokenize_to_shards(src, dst, str(image_tokenizer[0]))
    n_val = _count(digits_png, "val/*/*.png")
    assert m["splits"]["val"]["rows"] == n_val and m["failed"] == []
    assert read_manifest(dst) == m
    tokens, labels, _ = load_split_tokens(dst, "val")
    assert tokens.shape == (n_val, 16)
    assert all(u.startswith("gs://") for u in shard_urls(dst, "val"))
