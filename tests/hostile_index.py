"""Hostile index entries: rows of an index file and entries of the label files that the
converters read (a UCF101 trainlist, a Kinetics annotation CSV) that try to name files
outside the data set's folder or make tokenize workers fetch URLs.

Used by tests/test_index_confinement.py (in-process, no network: seconds).

Each kind is one entry among good rows. Target: every hostile entry is a failure (index
files) or a refusal (converters) whose source names its row, no item names a file outside
the folder, every good row comes through; with `tokenize.allow_external_urls` on, absolute
paths and URLs are read and `..` still is not.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from nestgen.data.index import read_index
from nestgen.data.layouts import kinetics600_index, ucf101_index

OUTSIDE = "outside/private"

# (name, path) rows of an index file in data/; the private file sits beside data/, in outside/.
INDEX_KINDS = [
    ("dotdot", f"../{OUTSIDE}.jpg"),
    ("dotdot after a folder", f"imgs/../../{OUTSIDE}.jpg"),
    ("absolute path", "{root}/" + f"{OUTSIDE}.jpg"),
    ("memory:// URL", "memory://leak/x.jpg"),
    ("http:// URL", "http://127.0.0.1:9/x.jpg"),
    ("file:// URL", "file://{root}/" + f"{OUTSIDE}.jpg"),
    ("chained URL", "simplecache::memory://leak/x.jpg"),
    ("file: start", "file:x.jpg"),
    ("drive letter", "C:x.jpg"),
    ("drive and backslash", "C:\\x.jpg"),
    ("UNC path", "\\\\server\\share\\x.jpg"),
    ("backslash climb", "imgs\\..\\..\\outside\\private.jpg"),
    ("NUL byte", f"imgs/a.jpg\x00../../{OUTSIDE}.jpg"),
    ("newline", "imgs/a\n.jpg"),
]
UCF_KINDS = [
    ("dotdot out of the root", f"../../{OUTSIDE}.avi 1"),
    ("dotdot out of UCF-101", f"../{OUTSIDE}.avi 1"),
    ("absolute path", "/etc/private.avi 1"),
    ("http:// URL", "http://127.0.0.1:9/v.avi 1"),
    ("backslash climb", "Archery\\..\\..\\..\\outside\\private.avi 1"),
    ("class index not in classInd", "Archery/v_Archery_g09_c01.avi 7"),
]
KINETICS_KINDS = [       # (name, label, youtube_id, time_start)
    ("memory:// id", "abseiling", "memory://leak/x", "0"),
    ("http:// id", "abseiling", "http://127.0.0.1:9/x", "0"),
    ("dotdot id", "abseiling", f"../../{OUTSIDE}", "0"),
    ("absolute id", "abseiling", "/etc/private", "0"),
    ("dotdot label", "../../outside", "ddd", "0"),
    ("NaN time", "abseiling", "eee", "nan"),
    ("negative time", "abseiling", "fff", "-5"),
]


def _file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")


def _inside(uri: str, folder: Path) -> bool:
    return uri.startswith(f"{folder}/")


def _index_files(root: Path) -> dict:
    """The index kinds in a JSONL index (NUL and newline need JSON), read without and with
    external files allowed."""
    data = root / "data"
    _file(data / "imgs" / "a.jpg")
    _file(root / f"{OUTSIDE}.jpg")
    good = {"path": "imgs/a.jpg", "label": "good", "split": "train"}

    def write(name: str, kinds: list[tuple[str, str]]) -> str:
        rows = [good] + [{"path": p.format(root=root), "label": "bad", "split": ("val", "test", "validation")[i % 3]}
                         for i, (_, p) in enumerate(kinds)]      # splits differ: the same file is not a duplicate id
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(data / name)

    items, failed, _ = read_index(write("index.jsonl", INDEX_KINDS))
    by_line = {int(f["source_uri"].rsplit("#line", 1)[1]): f["reason"] for f in failed}
    kinds = [{"kind": k, "refused": line in by_line, "reason": by_line.get(line)}
             for line, (k, _) in enumerate(INDEX_KINDS, 2)]
    # External files allowed: the absolute path and the file:// URL are read, '..' still is not
    # (no http:// row here: reading it would fetch).
    local = [kind for kind in INDEX_KINDS if kind[0] in ("absolute path", "file:// URL", "dotdot")]
    allowed, allowed_failed, _ = read_index(write("external.jsonl", local), allow_external=True)
    return {"kinds": kinds, "good_rows": sum(it["label_name"] == "good" for it in items),
            "outside_items": [it["uri"] for it in items if not _inside(it["uri"], data)],
            "allowed_external": sorted(it["uri"] for it in allowed if not _inside(it["uri"], data)),
            "allowed_still_refused": [f["reason"] for f in allowed_failed]}


def _converters(root: Path) -> dict:
    ucf = root / "ucf"
    for g in (1, 8):
        _file(ucf / "UCF-101" / "Archery" / f"v_Archery_g{g:02d}_c01.avi")
    (ucf / "ucfTrainTestlist").mkdir(parents=True)
    (ucf / "ucfTrainTestlist" / "classInd.txt").write_text("1 Archery\n")
    (ucf / "ucfTrainTestlist" / "trainlist01.txt").write_text(
        "Archery/v_Archery_g08_c01.avi 1\n" + "".join(e + "\n" for _, e in UCF_KINDS))
    (ucf / "ucfTrainTestlist" / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    k600 = root / "k600"
    _file(k600 / "train" / "abseiling" / "aaa_000010_000020.mp4")      # nested: a missing clip's path has its label
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows([("label", "youtube_id", "time_start", "time_end", "split"), ("abseiling", "aaa", 10, 20, "train")]
                + [(label, yid, start, 10, "train") for _, label, yid, start in KINETICS_KINDS])
    (k600 / "train.csv").write_text(buf.getvalue())
    out = {}
    for name, folder, summary, names in (
            ("ucf101", ucf, ucf101_index(str(ucf), str(ucf / "index.csv")), [k for k, _ in UCF_KINDS]),
            ("kinetics600", k600, kinetics600_index(str(k600), str(k600 / "index.csv")),
             [k for k, *_ in KINETICS_KINDS])):
        by_line = {int(f["source_uri"].rsplit("#line", 1)[1]): f["reason"] for f in summary["refused"]}
        first = 2 if name == "ucf101" else 3          # the good entry's line, then one line a kind
        items, _, _ = read_index(str(folder / "index.csv"))
        out[name] = {"kinds": [{"kind": k, "refused": line in by_line, "reason": by_line.get(line)}
                               for line, k in enumerate(names, first)],
                     "good_rows": len(items), "outside_items": [it["uri"] for it in items
                                                                if not _inside(it["uri"], folder)]}
    return out


def run_all(folder: Path) -> dict:
    return {"index_file": _index_files(folder), **_converters(folder)}


def _parts(result: dict) -> list[dict]:
    return [result["index_file"], result["ucf101"], result["kinetics600"]]


def ok(result: dict) -> bool:
    idx = result["index_file"]
    return (all(k["refused"] for p in _parts(result) for k in p["kinds"])
            and not any(p["outside_items"] for p in _parts(result))
            and idx["good_rows"] == 1 and result["ucf101"]["good_rows"] == 2 and result["kinetics600"]["good_rows"] == 1
            and len(idx["allowed_external"]) == 2 and len(idx["allowed_still_refused"]) == 1)


def summary(result: dict) -> str:
    kinds = [k for p in _parts(result) for k in p["kinds"]]
    idx = result["index_file"]
    return (f"hostile index entries: {sum(k['refused'] for k in kinds)}/{len(kinds)} refused with their row, "
            f"{sum(len(p['outside_items']) for p in _parts(result))} items outside the folder; with "
            f"allow_external_urls {len(idx['allowed_external'])} external files read and "
            f"{len(idx['allowed_still_refused'])} '..' refused; target met: {ok(result)}")
