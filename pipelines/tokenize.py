"""The Ray tokenization step: raw images/videos on any fsspec URL -> Parquet token shards.

    list files (ImageNet-/UCF101-like folders, or an index)  ->  Ray Data map_batches over tokenizer
    actors (the tokenizer loaded once per actor, GPU when the cluster has one)  ->
    shards-<run>/<split>/*.parquet  ->  manifest.json written last (the commit point)

Bad files (corrupt, truncated, too short, unreadable) become manifest entries with the
reason; everything else is written. Re-running with the same inputs and tokenizer is a
no-op; with changed inputs the new shards replace the old ones only once complete.
See nestgen.data.shards for the format.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import uuid
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nestgen.configschema import to_dict
from nestgen.data.media import ClipSpec, MediaError, VideoLimits
from nestgen.data.raw_files import list_raw_files, load_item
from nestgen.data.shards import FORMAT, MANIFEST, read_manifest, shard_schema
from nestgen.storage import WRITE_ATTEMPTS, exists, join, protocol_prefix, remove_tree, url_to_fs, write_json_atomic
from pipelines import lease
from pipelines.config import TokenizeConfig, load_run_config
from pipelines.ray_runtime import init_ray
from pipelines.model_registry import checkpoint_resolver

log = logging.getLogger(__name__)


def _fingerprint(items: list[dict], tok_hash: str, cfg: TokenizeConfig) -> str:
    h = hashlib.sha256(tok_hash.encode())
    h.update(json.dumps([cfg.fps, cfg.clips_per_video, cfg.max_image_pixels, cfg.max_video_pixels,
                         cfg.max_video_frames, cfg.max_video_seconds, cfg.max_file_bytes]).encode())
    for it in items:      # an index row's label, split and window are inputs as much as its file
        h.update(f"{it['rel']}|{it['size']}|{it['split']}|{it['label_name']}|{it['start']}|{it['end']}".encode())
    return h.hexdigest()[:16]


class TokenizeFiles:
    """Ray Data actor: decode a batch of files and tokenize them in one tokenizer call."""

    def __init__(self, tokenizer_url: str, tokenizer_hash: str, spec: dict, max_image_pixels: int,
                 video_limits: dict, max_file_bytes: int, progress=None):
        import torch

        from nestgen.tokenizers import load_tokenizer
        self.torch = torch
        # the driver's hash: a file replaced meanwhile is refused, not mixed into the shards
        self.tok = load_tokenizer(tokenizer_url, "cuda" if torch.cuda.is_available() else "cpu", tokenizer_hash)
        self.hash = tokenizer_hash
        self.spec = ClipSpec(**spec)
        self.max_image_pixels = max_image_pixels
        self.video_limits = VideoLimits(**video_limits)
        self.max_file_bytes = max_file_bytes
        self.grid = list(self.tok.grid)
        self.progress = progress          # the driver's console bar (pipelines.console.RemoteBar), in files
        self.schema = shard_schema(int(np.prod(self.grid))).append(pa.field("error", pa.string()))

    def _pixels(self, item: dict) -> list[tuple[str, np.ndarray]]:
        """[(id suffix, uint8 array)]: one image, or the clips of a video ('#clip<k>'), streamed
        from storage within the budgets (self.spec is the tokenizer's size and channels)."""
        if item["kind"] == "image" and self.tok.kind != "image":
            raise MediaError("an image, but the tokenizer is a video tokenizer")
        if item["kind"] == "video" and self.tok.kind != "video":
            raise MediaError("a video, but the tokenizer is an image tokenizer")
        arrays = load_item(item, self.spec, self.max_image_pixels, self.video_limits, self.max_file_bytes)
        return [("", arrays[0])] if item["kind"] == "image" else [(f"#clip{k}", c) for k, c in enumerate(arrays)]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        from nestgen.tokenizers import clips_to_pixels, images_to_pixels
        rows: list[dict[str, Any]] = []
        arrays: list[np.ndarray] = []
        for i in range(len(batch["uri"])):
            item = {k: v[i].item() if isinstance(v[i], np.generic) else v[i] for k, v in batch.items()}
            rid = item["id"]
            base = {"source_uri": item["uri"], "split": item["split"], "label": int(item["label"]),
                    "label_name": item["label_name"], "grid_shape": self.grid,
                    "tokenizer_hash": self.hash, "tokens": None, "error": None}
            try:
                for suffix, arr in self._pixels(item):
                    rows.append({**base, "id": rid + suffix})
                    arrays.append(arr)
            except MediaError as e:
                rows.append({**base, "id": rid, "error": str(e)})
        if arrays:
            stack = np.stack(arrays)
            to_px = clips_to_pixels if self.tok.kind == "video" else images_to_pixels
            ids = self.tok.encode(to_px(stack)).reshape(len(arrays), -1).cpu().numpy().astype(np.int32)
            ok = iter(ids)
            for r in rows:
                if r["error"] is None:
                    r["tokens"] = next(ok).tolist()
        if self.progress is not None:
            self.progress.add.remote(len(batch["uri"]))
        return pa.Table.from_pylist(rows, schema=self.schema)


def _drop_failed(t: pa.Table) -> pa.Table:
    return t.filter(pc.is_null(t["error"])).drop_columns(["error"])


def _only_failed(t: pa.Table) -> pa.Table:
    return t.filter(pc.is_valid(t["error"])).select(["source_uri", "error"])


def tokenize_to_shards(input_url: str, output_url: str, tokenizer_url: str,
                       cfg: TokenizeConfig | None = None, force: bool = False) -> dict:
    """Run the step; returns the manifest. Needs `ray.init()` (or an address) done by the caller.
    Holds the output folder's lease meanwhile: a second writer there is refused, naming this one."""
    with lease.Lease(output_url, "nestgen tokenize"):
        return _tokenize_to_shards(input_url, output_url, tokenizer_url, cfg, force)


def remove_stale_shards(output_url: str, run_dir: str) -> list[str]:
    """Delete the shards-* folders that the manifest on storage does not reference and that
    are older than run_dir (by the UTC time in their names): replaced or abandoned runs. A
    newer folder is another writer's run in progress; a folder the manifest names is read.
    Returns the names deleted."""
    fs, out_path = url_to_fs(output_url)
    referenced = {read_manifest(output_url).get("shards_dir")} if exists(join(output_url, MANIFEST)) else set()
    deleted = []
    for d in fs.ls(out_path, detail=False, refresh=True):
        name = d.rstrip("/").rsplit("/", 1)[-1]
        # shards-<YYYYmmddTHHMMSS>-<uid>: the fixed-width UTC stamp orders runs by start time
        if (name.startswith("shards-") and name not in referenced and name != run_dir
                and name[len("shards-"):][:15] < run_dir[len("shards-"):][:15]):
            remove_tree(protocol_prefix(output_url) + d)
            deleted.append(name)
    return deleted


def _tokenize_to_shards(input_url: str, output_url: str, tokenizer_url: str, cfg: TokenizeConfig | None,
                        force: bool) -> dict:
    import ray
    from ray.data.expressions import col

    from nestgen.tokenizers import load_tokenizer, resolve_tokenizer_url
    from pipelines.arrow_fs import arrow_filesystem
    from pipelines.console import RemoteBar

    cfg = cfg or TokenizeConfig()
    tokenizer_url = resolve_tokenizer_url(tokenizer_url, checkpoint_resolver())   # pin what a LATEST names
    tok = load_tokenizer(tokenizer_url)
    tok_hash = tok.hash
    items, unusable, label_map = list_raw_files(input_url, cfg.allow_external_urls)
    if not items:
        raise ValueError(f"no usable image or video files in {input_url}"
                         + (f" ({len(unusable)} unusable, e.g. {unusable[0]['reason']})" if unusable else ""))
    kinds = {it["kind"] for it in items}
    fingerprint = _fingerprint(items, tok_hash, cfg)
    manifest_url = join(output_url, MANIFEST)
    old = read_manifest(output_url) if exists(manifest_url) else None
    if old and not force and old.get("input_fingerprint") == fingerprint:
        log.info("tokenize: %s is up to date (fingerprint %s); nothing to do", output_url, fingerprint)
        return old

    use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    run_dir = f"shards-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    spec = asdict(ClipSpec(frames=tok.frames, fps=cfg.fps, size=tok.image_size,
                           channels=tok.channels, clips_per_video=cfg.clips_per_video))
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // cfg.batch_size, 200)))
    with RemoteBar("tokenize", "file", total=len(items)) as bar:
        ds = ds.map_batches(
            TokenizeFiles, fn_constructor_kwargs={"tokenizer_url": tokenizer_url, "tokenizer_hash": tok_hash,
                                                  "spec": spec, "max_image_pixels": cfg.max_image_pixels,
                                                  "video_limits": asdict(cfg.video_limits()),
                                                  "max_file_bytes": cfg.max_file_bytes, "progress": bar.feed},
            batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
            num_gpus=cfg.gpus_per_actor if use_gpu else 0, num_cpus=cfg.cpus_per_actor,
        ).materialize()

    failed = [{"source_uri": r["source_uri"], "reason": r["error"]}
              for r in ds.map_batches(_only_failed, batch_format="pyarrow").take_all()]
    failed += unusable
    good = ds.map_batches(_drop_failed, batch_format="pyarrow").materialize()
    counts = good.groupby(["split", "label_name"]).count().take_all()

    fs, out_path = url_to_fs(output_url)
    afs = arrow_filesystem(output_url)
    splits: dict[str, dict] = {}
    for split in sorted({c["split"] for c in counts}):
        part = good.filter(expr=col("split") == split)
        # A transient storage fault mid-file fails the write task (Ray Data's own in-task
        # retries match only AWS error messages): Ray runs the task again, which writes the
        # same file names over the broken one, so the files found below are all whole (a
        # refusal such as PermissionError, an OSError too, is repeated at most as often).
        part.write_parquet(f"{out_path.rstrip('/')}/{run_dir}/{split}", filesystem=afs,
                           min_rows_per_file=cfg.rows_per_shard,
                           ray_remote_args={"retry_exceptions": [OSError], "max_retries": WRITE_ATTEMPTS - 1})
        files = sorted(p for p in fs.find(f"{out_path.rstrip('/')}/{run_dir}/{split}") if p.endswith(".parquet"))
        per_label = {c["label_name"]: c["count()"] for c in counts if c["split"] == split}
        splits[split] = {"rows": sum(per_label.values()), "per_label": dict(sorted(per_label.items())),
                         "files": [p[len(out_path.rstrip("/")) + 1:] for p in files]}

    manifest = {
        "format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input_url": input_url, "input_fingerprint": fingerprint, "media": sorted(kinds),
        "num_inputs": len(items) + len(unusable),
        "tokenizer": {"url": tokenizer_url, "hash": tok_hash, **tok.describe()},
        "grid_shape": list(tok.grid), "vocab_size": tok.vocab_size,
        "label_map": label_map, "tokenize": to_dict(cfg), "shards_dir": run_dir,
        "splits": splits, "failed": sorted(failed, key=lambda f: f["source_uri"]),
    }
    lease.check(manifest_url)                               # a writer that lost the folder commits nothing
    write_json_atomic(manifest_url, manifest)               # the commit point
    lease.check(output_url)                                 # nor deletes what its successor may read
    remove_stale_shards(output_url, run_dir)
    return manifest


def cmd_tokenize(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    init_ray(args.ray_address)
    m = tokenize_to_shards(args.input, args.output, args.tokenizer, cfg.tokenize, force=args.force)
    print(json.dumps({k: m[k] for k in ("splits", "grid_shape", "vocab_size", "shards_dir")} |
                     {"failed": len(m["failed"]), "tokenizer_hash": m["tokenizer"]["hash"]}, indent=1))
    for f in m["failed"]:
        print(f"failed {f['source_uri']}: {f['reason']}", file=sys.stderr)
    return 0
