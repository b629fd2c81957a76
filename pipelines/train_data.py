"""Training tokens as a Ray Dataset: Parquet token shards (streamed) or the built-in digits."""
from __future__ import annotations

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
    """(ray Dataset of {"tokens": (N,) int64, "label": int64}, manifest or None)."""
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
    return ds.randomize_block_order().map_batches(_to_numpy, batch_format="pyarrow"), manifest
