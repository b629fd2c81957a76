"""Token shards: the on-storage format between tokenization and training/evaluation.

Layout under an output URL:

    manifest.json                      the commit point: written last, atomically
    shards-<run>/<split>/*.parquet     rows of one split

A reader only ever follows the manifest, so shards of an unfinished or failed run are
never visible. Parquet schema, one row per image or per video clip:

    id            string     stable id: <split>/<class>/<file>[#clip<k>]
    source_uri    string     the raw file it came from
    split         string     train | val | ...
    label         int32      class id from the manifest's label_map (sorted class names)
    label_name    string     the class folder name
    tokens        fixed_size_list<int32>[N]   token ids, row-major over grid_shape
    grid_shape    list<int32>                 [h, w] or [t, h, w]
    tokenizer_hash string    which tokenizer made the ids (nestgen.tokenizers.tokenizer_hash)
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nestgen.storage import join, read_json, url_to_fs

FORMAT = "nestgen-token-shards/1"
MANIFEST = "manifest.json"


def shard_schema(num_tokens: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()), ("source_uri", pa.string()), ("split", pa.string()),
        ("label", pa.int32()), ("label_name", pa.string()),
        ("tokens", pa.list_(pa.int32(), num_tokens)), ("grid_shape", pa.list_(pa.int32())),
        ("tokenizer_hash", pa.string()),
    ])


def read_manifest(url: str) -> dict:
    """The manifest of a shard folder (url may point at the folder or at manifest.json)."""
    murl = url if url.endswith(".json") else join(url, MANIFEST)
    m = read_json(murl)
    if m.get("format") != FORMAT:
        raise ValueError(f"{murl} is not a token-shard manifest (format {m.get('format')!r})")
    return m


def shard_urls(url: str, split: str, manifest: dict | None = None) -> list[str]:
    m = manifest or read_manifest(url)
    if split not in m["splits"]:
        raise ValueError(f"split {split!r} not in {url} (has {sorted(m['splits'])})")
    root = url[: -len(MANIFEST) - 1] if url.endswith(MANIFEST) else url.rstrip("/")
    return [join(root, f) for f in m["splits"][split]["files"]]


def load_split_tokens(url: str, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(tokens (n, N) long, labels (n,) long, manifest) of one split, read whole.

    For sets that fit in memory (evaluation references, small single-process runs); the
    distributed trainer streams shards with Ray Data instead.
    """
    m = read_manifest(url)
    tables = []
    for f in shard_urls(url, split, m):
        fs, path = url_to_fs(f)
        with fs.open(path, "rb") as fh:
            tables.append(pq.read_table(fh, columns=["tokens", "label"]))
    n_tok = int(torch.tensor(m["grid_shape"]).prod())
    if not tables:
        return torch.empty(0, n_tok, dtype=torch.long), torch.empty(0, dtype=torch.long), m
    t = pa.concat_tables(tables)
    flat = t.column("tokens").combine_chunks().flatten().to_numpy()
    tokens = torch.from_numpy(flat.reshape(-1, n_tok).astype("int64"))
    labels = torch.from_numpy(t.column("label").to_numpy().astype("int64"))
    return tokens, labels, m


def shard_tokenizer(url: str, expected_hash: str | None = None, device="cpu"):
    """The tokenizer that made a shard set's tokens (to decode generated tokens to pixels).

    The tokenizer file must still have the hash the manifest recorded, and with
    `expected_hash` (a generator checkpoint's tokenizer_hash) a different tokenizer is an
    error too: tokens are never decoded with another tokenizer than the one they came from."""
    from nestgen.tokenizers import load_tokenizer
    m = read_manifest(url)
    recorded = m["tokenizer"]["hash"]
    if expected_hash and recorded != expected_hash:
        raise ValueError(f"the tokenizer of {url} has hash {recorded}, but the model was trained on tokens of "
                         f"tokenizer {expected_hash}")
    return load_tokenizer(m["tokenizer"]["url"], device, expected_hash=recorded)
