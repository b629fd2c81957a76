"""Index files (nestgen.data.index) for the layouts the real data sets are shipped in.

Each converter lists the data set's folder once, reads its label files and writes the
index (CSV or JSONL by the suffix of `out`); it returns a summary with the rows per split,
the number of classes and what did not go in. A file that the label files name but that
is not on storage is still written, so that tokenization reports it as a failure row
("missing file") and the label map keeps its class; files that no label file names are
left out and counted. Paths are written relative to the index's folder when the files are
under it, else as absolute paths / URLs (which the index's readers take only where external
files are allowed: `relative_paths` in the summary says which).

A label-file entry is data that came with the download, not configuration: an entry whose
path would leave the root (a `..` component, an absolute path, a URL, a backslash, a
control character, a `scheme:` or drive-letter start; nestgen.data.index checks them for
index files too) is not written; it is listed in the summary's `refused`
([{source_uri: <label file>#line<N>, reason}], as manifests list failures) and the other
rows go on.

- ImageNet (ILSVRC2012 CLS-LOC): `train/<wnid>/*.JPEG`; `val/` flat and labelled by
  `LOC_val_solution.csv` (Kaggle's: ImageId, PredictionString whose first token is the
  wnid), or `val/<wnid>/` folders. `LOC_synset_mapping.txt` ("wnid name" lines), when
  present, is the class list: images of any other wnid are left out. Both files are looked
  for in the root and up to three folders above it (Kaggle's `ILSVRC/Data/CLS-LOC/` sits
  three below them). The devkit's `ILSVRC2012_validation_ground_truth.txt` is refused: its
  indices follow the devkit's `meta.mat` (ILSVRC2012_ID) order, not the wnid-sorted order
  of `LOC_synset_mapping.txt`, so mapping one through the other would mislabel val.
- UCF101: `UCF-101/<Class>/v_<Class>_gXX_cYY.avi` and `ucfTrainTestlist/` with
  `classInd.txt` (1-based "index Class"), `trainlist0N.txt` ("Class/v_....avi index") and
  `testlist0N.txt` ("Class/v_....avi") for split N in 1..3; splits train and test. Labels
  are classInd's names; list entries are matched to files case-insensitively (the
  official lists and files disagree on some names' case, e.g. HandStandPushups).
- Kinetics-600: the annotation CSVs (label, youtube_id, time_start, time_end, split; the
  test CSV has no labels and is left out) and clips named
  `<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>` anywhere under the root
  (`<split>/<label>/` folders or flat), found by name: start/end stay empty because the
  clips are already cut to the annotated 10 s. With `full_videos`, files named
  `<youtube_id>.<ext>` are whole downloads and each row carries the annotation's
  start/end, so tokenization cuts the window itself.
"""
from __future__ import annotations

import csv
import io
import posixpath
from collections import Counter

from nestgen.data.index import external_kind, seconds, shown, under, write_index
from nestgen.data.media import VIDEO_EXTENSIONS, media_kind
from nestgen.storage import protocol_prefix, read_bytes, url_to_fs

KINETICS_SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                   "validation": "val", "test": "test", "testing": "test"}


class _Tree:
    """One listing of a data set's root: files by path relative to it."""

    def __init__(self, root: str):
        self.fs, path = url_to_fs(root)
        self.root = path.rstrip("/")
        if not self.fs.isdir(self.root):
            raise FileNotFoundError(f"{root} is not a folder")
        self.prefix = protocol_prefix(root)
        self.files = sorted(p[len(self.root) + 1:] for p in self.fs.find(self.root))
        self._lower = {f.lower(): f for f in self.files}
        self._set = set(self.files)

    def url(self, rel: str) -> str:
        return f"{self.prefix}{self.root}/{rel}"

    def find(self, rel: str) -> str | None:
        """rel as stored (the exact name, else a case-insensitive match), or None."""
        return rel if rel in self._set else self._lower.get(rel.lower())

    def nearby(self, name: str, levels: int = 3) -> str | None:
        """The URL of `name` in the root or one of the `levels` folders above it, if any."""
        folder = self.root
        for _ in range(levels + 1):
            if self.fs.isfile(f"{folder}/{name}"):
                return f"{self.prefix}{folder}/{name}"
            folder = posixpath.dirname(folder)
        return None


def _relative_to(out: str, tree: _Tree):
    """(rel -> the path an index at `out` names that file by, whether that path is relative)."""
    _, out_path = url_to_fs(out)
    folder = posixpath.dirname(out_path)
    same = protocol_prefix(out) == tree.prefix
    if same and (tree.root == folder or tree.root.startswith(folder.rstrip("/") + "/")):
        base = tree.root[len(folder):].strip("/")
        return (lambda rel: posixpath.join(base, rel) if base else rel), True
    return tree.url, False


class _Refused(list):
    """The label-file entries not written: [{source_uri, reason}]."""

    def add(self, source: str, line: int, why: Exception | str) -> None:
        self.append({"source_uri": f"{source}#line{line}",
                     "reason": f"{posixpath.basename(source)} line {line}: {why}"})

    def check(self, tree: _Tree, rel: str, entries: tuple[str, ...], source: str, line: int) -> bool:
        """Whether rel, built from the entries of line `line` of the label file `source`,
        names a file under the root; if not, it is recorded with its reason."""
        try:
            for entry in (*entries, rel):
                kind = external_kind(entry)
                if kind is not None:
                    raise ValueError(f"path {shown(entry)} is {kind}, not a file under the data set's root")
            under(tree.root, rel)
        except ValueError as e:
            self.add(source, line, e)
            return False
        return True


def _lines(url: str) -> list[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line."""
    return [(n, ln.strip()) for n, ln in enumerate(read_bytes(url).decode("utf-8-sig").splitlines(), 1)
            if ln.strip()]


def _summary(rows: list[dict], relative: bool, refused: _Refused, **counts) -> dict:
    return {"rows": len(rows), "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
            "classes": len({r["label"] for r in rows}), "relative_paths": relative, **counts,
            "refused": list(refused)}


def imagenet_index(root: str, out: str, val_labels: str | None = None, synsets: str | None = None) -> dict:
    """Write the index of an ImageNet CLS-LOC folder (train/, val/); see the module doc."""
    tree = _Tree(root)
    path_of, relative = _relative_to(out, tree)
    val_labels = val_labels or tree.nearby("LOC_val_solution.csv")
    synsets = synsets or tree.nearby("LOC_synset_mapping.txt")
    known = {ln.split()[0] for _, ln in _lines(synsets)} if synsets else None
    rows, skipped, refused = [], Counter(), _Refused()

    def add(rel: str, wnid: str, split: str) -> None:
        if known is not None and wnid not in known:
            skipped["unknown_class"] += 1
        else:
            rows.append({"path": path_of(rel), "label": wnid, "split": split})

    flat_val = {}
    for rel in tree.files:
        parts = rel.split("/")
        if media_kind(rel) != "image" or parts[0] not in ("train", "val"):
            continue
        if len(parts) == 3:
            add(rel, parts[1], parts[0])
        elif len(parts) == 2 and parts[0] == "val":
            flat_val[parts[1].rsplit(".", 1)[0]] = rel
    if flat_val and not val_labels:
        devkit = tree.nearby("ILSVRC2012_validation_ground_truth.txt")
        raise FileNotFoundError(
            f"{root}: val/ is flat but LOC_val_solution.csv was not found (give its path)"
            + (f"; {devkit} is the devkit's ground truth, whose indices follow meta.mat's order, not "
               "LOC_synset_mapping.txt's: it is not supported" if devkit else ""))
    missing = 0
    if val_labels:
        reader = csv.DictReader(io.StringIO(read_bytes(val_labels).decode("utf-8-sig")))
        labelled = set()
        for r in reader:
            image_id, prediction = (r.get("ImageId") or "").strip(), (r.get("PredictionString") or "").split()
            if not image_id or not prediction:
                refused.add(val_labels, reader.line_num, "no ImageId or PredictionString")
                continue
            wnid = prediction[0]
            labelled.add(image_id)
            rel = flat_val.get(image_id)
            if rel is None and tree.find(f"val/{wnid}/{image_id}.JPEG") is None:
                rel = f"val/{image_id}.JPEG"
                if not refused.check(tree, rel, (image_id,), val_labels, reader.line_num):
                    continue
                missing += 1
            if rel is not None:
                add(rel, wnid, "val")
        skipped["unlabeled"] = len(set(flat_val) - labelled)
    return {"index": write_index(out, rows), **_summary(rows, relative, refused, missing=missing, **dict(skipped))}


def ucf101_index(root: str, out: str, split_number: int = 1) -> dict:
    """Write the index of UCF101 (UCF-101/ and ucfTrainTestlist/ under root) for one of its
    three train/test splits; see the module doc."""
    if split_number not in (1, 2, 3):
        raise ValueError(f"UCF101 has splits 1, 2 and 3, not {split_number}")
    tree = _Tree(root)
    path_of, relative = _relative_to(out, tree)
    videos = "UCF-101/" if any(f.startswith("UCF-101/") for f in tree.files) else ""
    lists = tree.find("ucfTrainTestlist/classInd.txt")
    if lists is None:
        raise FileNotFoundError(f"{root}: no ucfTrainTestlist/classInd.txt")
    lists = posixpath.dirname(lists)
    classes = {}
    for _, ln in _lines(tree.url(f"{lists}/classInd.txt")):
        idx, name = ln.split()
        classes[int(idx)] = name
    by_lower = {name.lower(): name for name in classes.values()}
    rows, listed, missing, refused = [], set(), 0, _Refused()
    for split, name in (("train", "trainlist"), ("test", "testlist")):
        list_rel = tree.find(f"{lists}/{name}{split_number:02d}.txt")
        if list_rel is None:
            raise FileNotFoundError(f"{root}: no {lists}/{name}{split_number:02d}.txt")
        for n, ln in _lines(tree.url(list_rel)):
            entry, *idx = ln.split()
            if idx and not (idx[0].isdigit() and int(idx[0]) in classes):
                refused.add(tree.url(list_rel), n, f"class index {shown(idx[0])} is not in classInd.txt")
                continue
            label = classes[int(idx[0])] if idx else by_lower.get(entry.split("/")[0].lower(), entry.split("/")[0])
            rel = tree.find(videos + entry)
            if rel is None:
                rel = videos + entry
                if not refused.check(tree, rel, (entry,), tree.url(list_rel), n):
                    continue
                missing += 1
            listed.add(rel)
            rows.append({"path": path_of(rel), "label": label, "split": split})
    unlisted = sum(1 for f in tree.files if f.startswith(videos) and media_kind(f) == "video" and f not in listed)
    return {"index": write_index(out, rows), **_summary(rows, relative, refused, missing=missing, unlisted=unlisted)}


def kinetics600_index(root: str, out: str, annotations: list[str] | None = None, full_videos: bool = False) -> dict:
    """Write the index of Kinetics-600 clips under root from its annotation CSVs (default:
    every *.csv in root and root/annotations/); see the module doc."""
    tree = _Tree(root)
    path_of, relative = _relative_to(out, tree)
    if not annotations:
        annotations = [tree.url(f) for f in tree.files
                       if f.lower().endswith(".csv") and posixpath.dirname(f) in ("", "annotations")]
        if not annotations:
            raise FileNotFoundError(f"{root}: no annotation CSVs (label,youtube_id,time_start,time_end,split)")
    by_stem: dict[str, str] = {}
    for f in tree.files:
        if f.lower().endswith(VIDEO_EXTENSIONS):
            by_stem.setdefault(posixpath.basename(f).rsplit(".", 1)[0], f)
    nested = any(f.count("/") >= 2 for f in by_stem.values())
    rows, missing, unlabeled, refused = [], 0, 0, _Refused()
    for url in annotations:
        reader = csv.DictReader(io.StringIO(read_bytes(url).decode("utf-8-sig")))
        for r in reader:
            label, split = (r.get("label") or "").strip(), KINETICS_SPLITS.get((r.get("split") or "").strip().lower())
            if not label or split is None:
                unlabeled += 1
                continue
            youtube_id = (r.get("youtube_id") or "").strip()
            try:
                start, end = (seconds(r.get(k) or "", k) for k in ("time_start", "time_end"))
                if not youtube_id or start is None or end is None:
                    raise ValueError("no youtube_id, time_start or time_end")
            except ValueError as e:
                refused.add(url, reader.line_num, e)
                continue
            stem = youtube_id if full_videos else f"{youtube_id}_{int(start):06d}_{int(end):06d}"
            rel = by_stem.get(stem)
            if rel is None:
                rel = f"{split}/{label}/{stem}.mp4" if nested else f"{stem}.mp4"
                if not refused.check(tree, rel, (label, youtube_id), url, reader.line_num):
                    continue
                missing += 1
            row = {"path": path_of(rel), "label": label, "split": split}
            rows.append(row | ({"start": f"{start:g}", "end": f"{end:g}"} if full_videos else {}))
    return {"index": write_index(out, rows), **_summary(rows, relative, refused, missing=missing, unlabeled=unlabeled)}


CONVERTERS = {"imagenet": imagenet_index, "ucf101": ucf101_index, "kinetics600": kinetics600_index}
