"""Raw media: folders laid out like ImageNet or UCF101, or an index file; loading them into arrays.

Layouts: `<root>/<split>/<class>/<file>` (split in train/val/validation/test),
`<root>/<class>/<file>` (all train), or a CSV/JSONL index naming each file with its label
and split (nestgen.data.index; video rows may carry a time window). Labels are the sorted
class names' indices: a stable label map. The Ray tokenization step (pipelines.tokenize)
and tokenizer training both start here, so every data set takes the same ingestion path.
"""
from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import replace
from typing import BinaryIO, Iterator

import numpy as np

from nestgen.data.index import SPLITS, is_index, item_id, read_index
from nestgen.data.media import (ClipSpec, MediaError, MediaLimitError, VideoLimits, load_image, load_video_clips,
                                media_kind, video_demuxer)
from nestgen.storage import protocol_prefix, read_bytes, url_to_fs


def list_raw_files(input_url: str, allow_external: bool = False) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(items, unusable [{source_uri, reason}], label_map) of a folder in the
    `<split>/<class>/<file>` or `<class>/<file>` layout, or of an index file (*.csv, *.jsonl).
    Items: {uri, rel, id, split, label_name, label, kind, size, start, end} (start/end: the
    seconds of a video's window; 0 and inf for the whole file). allow_external: an index's
    rows may name absolute paths and URLs (tokenize.allow_external_urls)."""
    if is_index(input_url):
        return read_index(input_url, allow_external)
    fs, root = url_to_fs(input_url)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise FileNotFoundError(f"input {input_url} does not exist")
    prefix = protocol_prefix(input_url)
    items, unusable, classes = [], [], set()
    for path, info in sorted(fs.find(root, detail=True).items()):
        rel = path[len(root):].lstrip("/")
        kind = media_kind(rel)
        if kind is None:
            continue                        # not media (README, .DS_Store, ...): not an input
        parts = rel.split("/")
        if len(parts) == 3 and parts[0] in SPLITS:
            split, cls = parts[0], parts[1]
        elif len(parts) == 2:
            split, cls = "train", parts[0]
        else:
            unusable.append({"source_uri": prefix + path,
                             "reason": "not inside a <split>/<class>/ or <class>/ folder"})
            continue
        classes.add(cls)
        items.append({"uri": prefix + path, "rel": rel, "id": item_id(split, cls, parts[-1]), "split": split,
                      "label_name": cls, "kind": kind, "size": int(info.get("size") or 0), "start": 0.0,
                      "end": math.inf})
    label_map = {name: i for i, name in enumerate(sorted(classes))}
    for it in items:
        it["label"] = label_map[it["label_name"]]
    return items, unusable, label_map


@contextmanager
def open_within_budget(uri: str, max_bytes: int) -> Iterator[BinaryIO]:
    """The file at `uri` open for streaming to a decoder, once the size its storage lists
    is within max_bytes: a bigger file is a MediaLimitError naming both before a byte of it
    is read (it was once read whole first: one multi-GB file took a worker's memory). A
    file that cannot be listed or opened is a MediaError."""
    try:
        fs, path = url_to_fs(uri)
        size = fs.size(path)
    except (OSError, ValueError) as e:
        raise MediaError(f"unreadable file: {type(e).__name__}: {e}") from None
    if size is None:
        raise MediaLimitError(f"file size not listed by its storage, so not within the budget of {max_bytes} bytes")
    if size > max_bytes:
        raise MediaLimitError(f"file is {size} bytes, over the budget of {max_bytes} bytes")
    try:
        f = fs.open(path, "rb")
    except (OSError, ValueError) as e:
        raise MediaError(f"unreadable file: {type(e).__name__}: {e}") from None
    with f:
        yield f


def load_item(it: dict, clip: ClipSpec, max_image_pixels: int, video_limits: VideoLimits, max_file_bytes: int
              ) -> list[np.ndarray]:
    """The uint8 arrays of one listed file (an item of list_raw_files: uri, rel, kind, start,
    end): [its image], clip.size square, or its clips within the item's window. Streamed
    from storage within the byte budget; a MediaError with the reason when over a budget or
    unreadable."""
    with open_within_budget(it["uri"], max_file_bytes) as f:
        if it["kind"] == "image":
            return [load_image(f, clip.size, clip.channels, max_image_pixels)]
        return load_video_clips(f, replace(clip, start=it["start"], end=it["end"]), video_limits,
                                video_demuxer(it["rel"]))


def load_raw_split(url: str, split: str, kind: str, clip: ClipSpec, max_image_pixels: int, video_limits: VideoLimits,
                   allow_external: bool = False, *, max_file_bytes: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(uint8 arrays (n, [T,] size, size, C), labels (n,), failed [{source_uri, reason}])
    of one split, in memory: for tokenizer training on sets that fit; bad files and files
    over the budgets are skipped. Images are clip.size x clip.size too."""
    items, failed, _ = list_raw_files(url, allow_external)
    arrays, labels = [], []
    for it in items:
        if it["split"] != split or it["kind"] != kind:
            continue
        try:
            got = load_item(it, clip, max_image_pixels, video_limits, max_file_bytes)
        except MediaError as e:
            failed.append({"source_uri": it["uri"], "reason": str(e)})
            continue
        arrays.extend(got)
        labels.extend([it["label"]] * len(got))
    if not arrays:
        raise FileNotFoundError(f"no usable {kind} files in split {split!r} under {url}")
    return np.stack(arrays), np.asarray(labels, dtype=np.int64), failed


def listing_digest(url: str, allow_external: bool = False) -> str:
    """Names and sizes of every file under a raw folder, or an index's text and the sizes of
    the files it names (as list_raw_files reads them): changes when the data do."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        return f"missing:{url}"
    h = hashlib.sha256()
    if is_index(url):
        h.update(read_bytes(url))
        for it in list_raw_files(url, allow_external)[0]:
            h.update(f"{it['uri']}|{it['size']}".encode())
        return h.hexdigest()
    for name, info in sorted(fs.find(path, detail=True).items()):
        h.update(f"{name[len(path):]}|{info.get('size')}".encode())
    return h.hexdigest()
