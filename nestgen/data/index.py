"""An index file naming the raw media of a data set: the input for layouts that are not
`<split>/<class>/<file>` folders (nestgen.data.layouts writes it for ImageNet, UCF101 and
Kinetics-600).

A CSV file with a header, or JSONL (one JSON object a line), with the fields

    path    the file, relative to the index's folder; an absolute local path or an fsspec
            URL (gs://..., https://..., memory://...) only where external files are allowed
    label   the class name; the label map is the sorted class names of all labelled rows
    split   train, val, validation or test
    start   optional, videos only: seconds where the clip window begins (empty: 0)
    end     optional, videos only: seconds where it ends (empty: the end of the video)

A row that cannot be used (no path, no label, an unknown split, a start/end that is not a
number, negative, not start < end or given for an image, a path that is not an image or
video by its extension, a path that leaves the index's folder, a protocol fsspec does not
know, a missing file, a second row with the same id) is a failure with its reason, like an
unreadable file, and the other rows go on. A file without the path, label and split
columns is refused as a whole.

Index rows stay in the index's folder: an index is often made from label files that came
with a download (UCF101's trainlists, Kinetics' annotation CSVs), and its rows must not
make tokenize workers read the machine's other files or fetch URLs. So a path with a `..`
component, a backslash, a NUL or other control character, or a `scheme:` / drive-letter
start (`file:x`, `C:x`) is refused, and an absolute path or a URL (`/x`, `gs://...`,
`https://...`) only names a file when the reader is told external files are allowed
(`tokenize.allow_external_urls`). The check is on the normalised joined path, the same for
local and fsspec folders; symlinks inside the folder are followed as their owner made them.
Files are listed one folder at a time (one listing call per folder, not one per file),
which keeps a million-row index on object storage fast.
"""
from __future__ import annotations

import csv
import io
import json
import math
import posixpath
import re
from collections import defaultdict

import fsspec

from nestgen.data.media import media_kind
from nestgen.storage import protocol_prefix, read_bytes, url_to_fs

INDEX_SUFFIXES = (".csv", ".jsonl")
SPLITS = ("train", "val", "validation", "test")
COLUMNS = ("path", "label", "split", "start", "end")
REQUIRED = ("path", "label", "split")


def is_index(url: str) -> bool:
    return url.lower().endswith(INDEX_SUFFIXES)


def item_id(split: str, label: str, name: str, start: float = 0.0, end: float = math.inf) -> str:
    """A row's id in the shards: split/label/file name, plus @start-end for a time window
    (@start- when it runs to the end of the video)."""
    window = f"@{start:g}-{'' if end == math.inf else f'{end:g}'}" if (start > 0 or end < math.inf) else ""
    return f"{split}/{label}/{name}{window}"


def _rows(url: str) -> list[tuple[int, dict | None]]:
    """(line number, fields or None when the line is not a record) for each data line."""
    text = read_bytes(url).decode("utf-8-sig")
    if url.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"index {url}: the header {reader.fieldnames} lacks the column(s) {missing}")
        return [(reader.line_num, row) for row in reader]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            row = {k: "" if v is None else str(v) for k, v in row.items()}
        out.append((n, row if isinstance(row, dict) else None))
    return out


def seconds(value: str, name: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        s = float(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a number of seconds") from None
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{name} {value!r} must be a finite number >= 0")
    return s


# A start that fsspec or Windows could read as a protocol or a drive: `file:x`, `C:x`, `gs:x`.
_SCHEME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EXTERNAL_HINT = "external files need tokenize.allow_external_urls: true"


def shown(entry: str, limit: int = 120) -> str:
    """An entry for a one-line reason: quoted, control characters escaped, long ones cut."""
    return repr(entry if len(entry) <= limit else entry[:limit] + "...")


def external_kind(entry: str) -> str | None:
    """'a URL' or 'an absolute path' for an entry naming a file by itself, None for a
    relative one; ValueError for an entry no reader should follow (see the module doc)."""
    if _CONTROL.search(entry):
        raise ValueError(f"path {shown(entry)} has a control character")
    if "\\" in entry:
        raise ValueError(f"path {shown(entry)} has a backslash")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", entry):
        return "a URL"
    if "://" in entry or _SCHEME_LIKE.match(entry):
        raise ValueError(f"path {shown(entry)} looks like a URL or a drive letter")
    return "an absolute path" if entry.startswith("/") else None


def under(base: str, entry: str) -> str:
    """base/entry normalised, for a relative entry that must stay under base: ValueError
    for a '..' component, and the normalised path is checked too, whatever the spelling."""
    root = posixpath.normpath(base) if base else ""
    joined = posixpath.normpath(posixpath.join(root, entry))
    if ".." in entry.split("/") or (root and not (joined + "/").startswith(root.rstrip("/") + "/")):
        raise ValueError(f"path {shown(entry)} climbs out of its folder with '..'")
    return joined


def _resolve(path: str, base: str, base_prefix: str, allow_external: bool) -> str:
    """The URL of a row's path: relative ones under the index's folder; URLs and absolute
    paths as written, where external files are allowed."""
    kind = external_kind(path)
    if kind is None:
        return base_prefix + under(base, path)
    if not allow_external:
        raise ValueError(f"path {shown(path)} is {kind}, not a file under the index's folder: {EXTERNAL_HINT}")
    if kind == "a URL":
        protocol = path.split("://", 1)[0]
        if protocol not in fsspec.available_protocols():
            raise ValueError(f"unknown protocol {protocol!r}")
    return path


def _parse_row(fields: dict, base: str, base_prefix: str, allow_external: bool) -> dict:
    """One row -> item fields; ValueError with the reason for an unusable row."""
    get = lambda k: (fields.get(k) or "").strip()  # noqa: E731
    path, label, split = get("path"), get("label"), get("split")
    if not path:
        raise ValueError("no path")
    uri = _resolve(path, base, base_prefix, allow_external)
    if not label:
        raise ValueError("no label")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    kind = media_kind(path)
    if kind is None:
        raise ValueError("not an image or video file by its extension")
    start, end = seconds(get("start"), "start"), seconds(get("end"), "end")
    if kind == "image" and (start is not None or end is not None):
        raise ValueError("start/end given for an image")
    start, end = start or 0.0, math.inf if end is None else end
    if not start < end:
        raise ValueError(f"start {start:g} is not before end {end:g}")
    return {"uri": uri, "rel": path, "split": split, "label_name": label, "kind": kind, "start": start,
            "end": end, "id": item_id(split, label, posixpath.basename(path), start, end)}


def _sizes(uris: list[str]) -> dict[str, int]:
    """uri -> size in bytes of each existing file, one listing per folder."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for u in uris:
        by_dir[u.rsplit("/", 1)[0] or "/"].append(u)
    sizes = {}
    for folder, members in by_dir.items():
        fs, path = url_to_fs(folder)
        try:
            listing = fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        found = {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
                 for e in listing if e.get("type") == "file"}
        sizes.update({u: found[u.rsplit("/", 1)[1]] for u in members if u.rsplit("/", 1)[1] in found})
    return sizes


def read_index(url: str, allow_external: bool = False) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(items, failed [{source_uri, reason}], label_map) from a CSV/JSONL index: the same
    items as `nestgen.data.raw_files.list_raw_files` gives for a folder. allow_external:
    rows may name absolute paths and URLs (else they are failures; see the module doc)."""
    fs, path = url_to_fs(url)
    if not fs.isfile(path):
        raise FileNotFoundError(f"index {url} does not exist")
    base, base_prefix = posixpath.dirname(path), protocol_prefix(url)
    items, failed, labels = [], [], set()
    for line, fields in _rows(url):
        where = f"{url}#line{line}"
        if fields is None:
            failed.append({"source_uri": where, "reason": f"index line {line}: not a JSON object"})
            continue
        if (fields.get("label") or "").strip():
            labels.add(fields["label"].strip())
        try:
            it = _parse_row(fields, base, base_prefix, allow_external)
        except ValueError as e:
            failed.append({"source_uri": where, "reason": f"index line {line}: {e}"})
            continue
        items.append(it | {"line": line})
    sizes = _sizes([it["uri"] for it in items])
    usable, seen = [], {}
    for it in items:
        line = it.pop("line")
        if it["uri"] not in sizes:
            failed.append({"source_uri": it["uri"], "reason": f"index line {line}: missing file"})
        elif it["id"] in seen:
            failed.append({"source_uri": it["uri"],
                           "reason": f"index line {line}: the same id {it['id']} as line {seen[it['id']]}"})
        else:
            seen[it["id"]] = line
            usable.append(it | {"size": sizes[it["uri"]]})
    label_map = {name: i for i, name in enumerate(sorted(labels))}
    for it in usable:
        it["label"] = label_map[it["label_name"]]
    return usable, failed, label_map


def write_index(url: str, rows: list[dict]) -> str:
    """Write rows ({path, label, split[, start, end]}) as CSV or JSONL by url's suffix."""
    from nestgen.storage import write_bytes_atomic
    if not is_index(url):
        raise ValueError(f"{url}: an index is a .csv or .jsonl file")
    if url.lower().endswith(".csv"):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
        data = buf.getvalue()
    else:
        data = "".join(json.dumps({k: r[k] for k in COLUMNS if r.get(k) is not None}) + "\n" for r in rows)
    return write_bytes_atomic(url, data.encode())
