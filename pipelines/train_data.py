"""Training data as Ray Datasets: tokens for the generator (Parquet token shards, streamed, or
the built-in digits) and decoded pixels of raw files for the tokenizer."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pyarrow as pa

from nestgen.data.shards import read_manifest, shard_urls
from nestgen.storage import url_to_fs
from pipelines.config import RunConfig


def _to_numpy(t: pa.Table) -> dict[str, np.ndarray]:
    tokens = t.column("tokens").combine_chunks()
    n = tokens.type.list_size
    return {"tokens": tokens.flatten().to_numpy().astype(np.int64).reshape(-1, n),
            "label": t.column("label").to_numpy().astype(np.int64)}


def check_manifest_fits(cfg: RunConfig, manifest: dict) -> None:
    m = cfg.model
    if list(manifest["grid_shape"]) != list(m.grid) or manifest["vocab_size"] != m.vocab_size:
        raise ValueError(f"model.grid={m.grid} / model.vocab_size={m.vocab_size} do not match the shards' "
                         f"grid_shape={manifest['grid_shape']} / vocab_size={manifest['vocab_size']}")
    if len(manifest["label_map"]) > m.num_classes:
        raise ValueError(f"model.num_classes={m.num_classes} < {len(manifest['label_map'])} classes in the shards")


def token_dataset(cfg: RunConfig, split: str = "train"):
    """(ray Dataset of {"tokens": (N,) int64, "label": int64}, manifest or None); its block
    order is shuffled by cfg.seed (the same order every epoch: the workers' local shuffle,
    seeded per epoch, varies the batches)."""
    import ray

    from pipelines.arrow_fs import arrow_filesystem
    if cfg.data.source == "digits":
        from nestgen.data.digits import load_digit_tokens
        (tokens, labels), _ = load_digit_tokens(cfg.data.holdout_fraction, cfg.data.seed)
        flat = pa.array(tokens.numpy().reshape(-1).astype(np.int32))
        table = pa.table({"tokens": pa.FixedSizeListArray.from_arrays(flat, tokens.shape[1]),
                          "label": pa.array(labels.numpy().astype(np.int32))})
        ds = ray.data.from_arrow(table)
        manifest = None
    else:
        manifest = read_manifest(cfg.data.url)
        check_manifest_fits(cfg, manifest)
        paths = [url_to_fs(u)[1] for u in shard_urls(cfg.data.url, split, manifest)]
        ds = ray.data.read_parquet(paths, filesystem=arrow_filesystem(cfg.data.url), columns=["tokens", "label"])
    return ds.randomize_block_order(seed=cfg.seed).map_batches(_to_numpy, batch_format="pyarrow"), manifest


def _decode_batch(batch: dict[str, np.ndarray], kind: str, spec: dict, max_image_pixels: int,
                  video_limits: dict, max_file_bytes: int) -> dict[str, np.ndarray]:
    """Files -> uint8 pixels; undecodable files and files over the budgets are dropped
    (tokenize reports them by name)."""
    from nestgen.data.media import ClipSpec, MediaError, VideoLimits
    from nestgen.data.raw_files import load_item
    clip, limits = ClipSpec(**spec), VideoLimits(**video_limits)
    out = []
    for i in range(len(batch["uri"])):
        item = {k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in batch.items()}   # str: object
        try:
            out.extend(load_item(item, clip, max_image_pixels, limits, max_file_bytes))
        except MediaError:
            continue
    shape = ((0, clip.size, clip.size, clip.channels) if kind == "image"
             else (0, clip.frames, clip.size, clip.size, clip.channels))
    return {"pixels": np.stack(out) if out else np.zeros(shape, np.uint8)}


def pixel_dataset(cfg: RunConfig, data_url: str, split: str = "train"):
    """ray Dataset of {"pixels": uint8 images or clips} decoded from the raw files of
    cfg.tokenizer.kind in `split` under data_url, clipped as cfg.tokenizer / cfg.tokenize say;
    block order shuffled by cfg.tokenizer.seed."""
    import ray

    from nestgen.data.media import ClipSpec
    from nestgen.data.raw_files import list_raw_files
    t = cfg.tokenizer
    items, _, _ = list_raw_files(data_url, cfg.tokenize.allow_external_urls)
    items = [{k: it[k] for k in ("uri", "rel", "kind", "start", "end")} for it in items
             if it["split"] == split and it["kind"] == t.kind]
    if not items:
        raise ValueError(f"no {t.kind} files in split {split!r} under {data_url}")
    spec = asdict(ClipSpec(frames=t.frames, fps=cfg.tokenize.fps, size=t.image_size, channels=t.channels,
                           clips_per_video=cfg.tokenize.clips_per_video))
    return ray.data.from_items(items).randomize_block_order(seed=t.seed).map_batches(
        _decode_batch, fn_kwargs={"kind": t.kind, "spec": spec, "max_image_pixels": cfg.tokenize.max_image_pixels,
                                  "video_limits": asdict(cfg.tokenize.video_limits()),
                                  "max_file_bytes": cfg.tokenize.max_file_bytes},
        batch_size=64, batch_format="numpy")
