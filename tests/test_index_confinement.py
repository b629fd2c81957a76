"""Index entries stay in their root: rows of an index file, and entries of the label files the
converters read (a UCF101 trainlist, a Kinetics annotation CSV), that would name a file
outside the folder (`..`, an absolute path, a URL, a backslash, a control character, a
`file:` / drive-letter start) are failures naming their row, and the good rows come through.
Absolute paths and URLs are read only with tokenize.allow_external_urls."""
import json

import fsspec
import pytest

from nestgen.configschema import ConfigError
from nestgen.data.index import read_index, under
from nestgen.data.layouts import imagenet_index, kinetics600_index, ucf101_index
from nestgen.data.raw_files import list_raw_files
from pipelines.cli import main as nestgen_main
from pipelines.config import TokenizeConfig, run_config_from_dict

HINT = "external files need tokenize.allow_external_urls: true"


def _file(path, data=b"not decoded here"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def outside(tmp_path):
    """A data folder and a private file beside it, which no row may reach."""
    _file(tmp_path / "data" / "imgs" / "a.jpg")
    _file(tmp_path / "outside" / "private.jpg")
    return tmp_path


def test_rows_leaving_the_index_folder_are_failures_naming_the_row(outside):
    data, private = outside / "data", outside / "outside" / "private.jpg"
    (data / "index.csv").write_text(
        "path,label,split\n"
        "imgs/a.jpg,cat,train\n"                             # 2: the good row
        "../outside/private.jpg,cat,val\n"                   # 3
        "imgs/../../outside/private.jpg,cat,test\n"          # 4: climbs out after going in
        f"{private},cat,validation\n"                        # 5: absolute
        "memory://leak/x.jpg,dog,train\n"                    # 6: URLs
        "http://127.0.0.1:9/x.jpg,dog,val\n"
        f"file://{private},dog,test\n"
        "file:outside.jpg,cat,train\n"                       # 9: scheme and drive starts
        "C:x.jpg,cat,train\n"
        '"C:\\x.jpg",cat,train\n'                            # 11: backslashes
        '"\\\\server\\share\\x.jpg",cat,train\n'
        '"imgs\\..\\..\\outside\\private.jpg",cat,train\n'
        "imgs/./a.jpg,cat,val\n")                            # 14: normalised, stays inside: good
    items, failed, label_map = list_raw_files(str(data / "index.csv"))
    assert sorted((it["uri"], it["split"]) for it in items) == [
        (f"{data}/imgs/a.jpg", "train"), (f"{data}/imgs/a.jpg", "val")]
    assert label_map == {"cat": 0, "dog": 1}
    assert {f["source_uri"] for f in failed} == {f"{data}/index.csv#line{n}" for n in range(3, 14)}
    assert sorted(f["reason"] for f in failed) == sorted([
        "index line 3: path '../outside/private.jpg' climbs out of its folder with '..'",
        "index line 4: path 'imgs/../../outside/private.jpg' climbs out of its folder with '..'",
        f"index line 5: path '{private}' is an absolute path, not a file under the index's folder: {HINT}",
        f"index line 6: path 'memory://leak/x.jpg' is a URL, not a file under the index's folder: {HINT}",
        f"index line 7: path 'http://127.0.0.1:9/x.jpg' is a URL, not a file under the index's folder: {HINT}",
        f"index line 8: path 'file://{private}' is a URL, not a file under the index's folder: {HINT}",
        "index line 9: path 'file:outside.jpg' looks like a URL or a drive letter",
        "index line 10: path 'C:x.jpg' looks like a URL or a drive letter",
        "index line 11: path 'C:\\\\x.jpg' has a backslash",
        "index line 12: path '\\\\\\\\server\\\\share\\\\x.jpg' has a backslash",
        "index line 13: path 'imgs\\\\..\\\\..\\\\outside\\\\private.jpg' has a backslash"])


def test_control_characters_in_a_jsonl_index_are_failures(outside):
    data = outside / "data"
    rows = [{"path": "imgs/a.jpg", "label": "cat", "split": "train"},
            {"path": "imgs/a.jpg\u0000../../outside/private.jpg", "label": "cat", "split": "val"},
            {"path": "imgs/a\n.jpg", "label": "cat", "split": "test"}]
    (data / "i.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, failed, _ = read_index(str(data / "i.jsonl"))
    assert [it["uri"] for it in items] == [f"{data}/imgs/a.jpg"]
    assert [f["reason"] for f in failed] == [
        "index line 2: path 'imgs/a.jpg\\x00../../outside/private.jpg' has a control character",
        "index line 3: path 'imgs/a\\n.jpg' has a control character"]


def test_external_files_only_when_the_config_allows_them(outside):
    data, private = outside / "data", outside / "outside" / "private.jpg"
    fs = fsspec.filesystem("memory")
    fs.pipe("/nestgen-confinement-test/x.jpg", b"in memory")
    try:
        (data / "index.csv").write_text(
            "path,label,split\n"
            "imgs/a.jpg,cat,train\n"
            f"{private},cat,val\n"
            f"file://{private},cat,test\n"
            "memory://nestgen-confinement-test/x.jpg,dog,train\n"
            "../outside/private.jpg,cat,validation\n")       # '..' stays refused
        assert [it["uri"] for it in read_index(str(data / "index.csv"))[0]] == [f"{data}/imgs/a.jpg"]
        items, failed, _ = read_index(str(data / "index.csv"), allow_external=True)
        assert sorted(it["uri"] for it in items) == sorted([
            f"{data}/imgs/a.jpg", str(private), f"file://{private}", "memory://nestgen-confinement-test/x.jpg"])
        assert [f["reason"] for f in failed] == [
            "index line 6: path '../outside/private.jpg' climbs out of its folder with '..'"]
    finally:
        fs.rm("/nestgen-confinement-test", recursive=True)


def test_the_config_field_is_off_by_default_and_strictly_typed():
    assert TokenizeConfig().allow_external_urls is False
    assert run_config_from_dict({"tokenize": {"allow_external_urls": True}}).tokenize.allow_external_urls is True
    with pytest.raises(ConfigError, match="allow_external_urls"):
        run_config_from_dict({"tokenize": {"allow_external_urls": "yes"}})


def test_an_index_on_fsspec_storage_is_confined_the_same_way():
    fs = fsspec.filesystem("memory")
    fs.pipe("/nestgen-confinement-bucket/data/imgs/a.jpg", b"x")
    fs.pipe("/nestgen-confinement-bucket/private.jpg", b"x")
    fs.pipe("/nestgen-confinement-bucket/data/index.csv",
            b"path,label,split\nimgs/a.jpg,cat,train\n../private.jpg,cat,val\nimgs//./a.jpg,cat,test\n")
    try:
        items, failed, _ = read_index("memory://nestgen-confinement-bucket/data/index.csv")
        assert [it["uri"] for it in items] == ["memory:///nestgen-confinement-bucket/data/imgs/a.jpg"] * 2
        assert [f["reason"] for f in failed] == ["index line 3: path '../private.jpg' climbs out of its folder with '..'"]
    finally:
        fs.rm("/nestgen-confinement-bucket", recursive=True)
    # A gs:// index's folder is "bucket/path": the joined path is normalised and checked under it.
    assert under("bucket/data", "imgs/./a.jpg") == "bucket/data/imgs/a.jpg"
    for entry in ("../other/x.jpg", "imgs/../../other/x.jpg", ".."):
        with pytest.raises(ValueError, match="climbs out"):
            under("bucket/data", entry)


def test_a_ucf101_trainlist_cannot_name_files_outside_the_root(tmp_path, capsys):
    root = tmp_path / "ucf"
    for g in (1, 8):
        _file(root / "UCF-101" / "Archery" / f"v_Archery_g{g:02d}_c01.avi")
    _file(tmp_path / "outside" / "private.avi")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Archery\n")
    (lists / "trainlist01.txt").write_text(
        "Archery/v_Archery_g08_c01.avi 1\n"          # 1: good
        "../../outside/private.avi 1\n"              # 2: out of the root
        "../outside/private.avi 1\n"                 # 3: out of UCF-101/
        "/etc/private.avi 1\n"                       # 4: absolute
        "http://127.0.0.1:9/v.avi 1\n"               # 5: a URL
        "Archery\\..\\..\\..\\outside\\private.avi 1\n"
        "Archery/v_Archery_g09_c01.avi 7\n"          # 7: no such class index
        "Archery/v_Archery_g10_c01.avi 1\n")         # 8: missing file: still written, as before
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\n")
    trainlist = f"{lists}/trainlist01.txt"
    summary = ucf101_index(str(root), str(root / "index.csv"))
    assert summary["splits"] == {"test": 1, "train": 2} and summary["missing"] == 1
    assert summary["relative_paths"] is True
    assert [f["source_uri"] for f in summary["refused"]] == [f"{trainlist}#line{n}" for n in (2, 3, 4, 5, 6, 7)]
    assert [f["reason"] for f in summary["refused"]] == [
        "trainlist01.txt line 2: path 'UCF-101/../../outside/private.avi' climbs out of its folder with '..'",
        "trainlist01.txt line 3: path 'UCF-101/../outside/private.avi' climbs out of its folder with '..'",
        "trainlist01.txt line 4: path '/etc/private.avi' is an absolute path, not a file under the data set's root",
        "trainlist01.txt line 5: path 'http://127.0.0.1:9/v.avi' is a URL, not a file under the data set's root",
        "trainlist01.txt line 6: path 'Archery\\\\..\\\\..\\\\..\\\\outside\\\\private.avi' has a backslash",
        "trainlist01.txt line 7: class index '7' is not in classInd.txt"]
    assert "outside" not in (root / "index.csv").read_text()
    items, failed, _ = read_index(str(root / "index.csv"))
    assert sorted(it["rel"] for it in items) == ["UCF-101/Archery/v_Archery_g01_c01.avi",
                                                 "UCF-101/Archery/v_Archery_g08_c01.avi"]
    assert [f["reason"] for f in failed] == ["index line 3: missing file"]
    # The CLI prints the summary with the count and each refusal on stderr, and says when the
    # index it wrote names files by absolute path (outside the data set's folder).
    assert nestgen_main(["index", "ucf101", str(root), "--out", str(tmp_path / "elsewhere" / "i.csv")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["refused"] == 6 and json.loads(out)["relative_paths"] is False
    assert f"refused {trainlist}#line2: trainlist01.txt line 2: path 'UCF-101/../../outside" in err
    assert "needs tokenize.allow_external_urls: true" in err
    assert read_index(str(tmp_path / "elsewhere" / "i.csv"))[0] == []
    assert len(read_index(str(tmp_path / "elsewhere" / "i.csv"), allow_external=True)[0]) == 2


@pytest.mark.parametrize("full_videos", [False, True])
def test_a_kinetics_csv_cannot_turn_ids_into_urls_or_paths_outside_the_root(tmp_path, full_videos):
    root = tmp_path / "k600"
    good = "aaa.mp4" if full_videos else "aaa_000010_000020.mp4"
    _file(root / good)
    (root / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,10,20,train\n"                       # 2: good
        "abseiling,memory://leak/x,0,10,train\n"            # 3: the measured URL row
        "abseiling,http://127.0.0.1:9/x,0,10,train\n"
        "abseiling,../../outside/private,0,10,train\n"
        "abseiling,/etc/private,0,10,train\n"
        "abseiling,bbb,nan,10,train\n"                      # 7: not a time
        "abseiling,ccc,-5,10,train\n")
    summary = kinetics600_index(str(root), str(root / "index.csv"), full_videos=full_videos)
    assert summary["splits"] == {"train": 1} and summary["missing"] == 0
    assert [f["source_uri"] for f in summary["refused"]] == [f"{root}/train.csv#line{n}" for n in range(3, 9)]
    reasons = [f["reason"] for f in summary["refused"]]
    assert reasons[0] == "train.csv line 3: path 'memory://leak/x' is a URL, not a file under the data set's root"
    assert reasons[1].startswith("train.csv line 4: path 'http://127.0.0.1:9/x' is a URL")
    assert reasons[2].startswith("train.csv line 5: path '../../outside/private") and "'..'" in reasons[2]
    assert reasons[3] == "train.csv line 6: path '/etc/private' is an absolute path, not a file under the data set's root"
    assert reasons[4] == "train.csv line 7: time_start 'nan' must be a finite number >= 0"
    assert reasons[5] == "train.csv line 8: time_start '-5' must be a finite number >= 0"
    text = (root / "index.csv").read_text()
    assert "://" not in text and "outside" not in text and "/etc" not in text
    items, failed, _ = read_index(str(root / "index.csv"))
    assert [it["rel"] for it in items] == [good] and failed == []


def test_an_imagenet_val_label_file_cannot_name_files_outside_the_root(tmp_path):
    root = tmp_path / "in"
    _file(root / "train" / "n01" / "n01_0.JPEG")
    _file(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n01 1 2 3 4\n"
        "../../outside/private,n01 1 2 3 4\n"               # 3
        "http://127.0.0.1:9/x,n01 1 2 3 4\n"
        "ILSVRC2012_val_00000002,\n")                      # 5: no label: not a row either
    summary = imagenet_index(str(root), str(root / "index.csv"))
    assert summary["splits"] == {"train": 1, "val": 1}
    assert [f["reason"] for f in summary["refused"]] == [
        "LOC_val_solution.csv line 3: path 'val/../../outside/private.JPEG' climbs out of its folder with '..'",
        "LOC_val_solution.csv line 4: path 'http://127.0.0.1:9/x' is a URL, not a file under the data set's root",
        "LOC_val_solution.csv line 5: no ImageId or PredictionString"]
    assert read_index(str(root / "index.csv"))[1] == []


def test_the_hostile_index_entries_meet_their_target(tmp_path):
    import hostile_index
    result = hostile_index.run_all(tmp_path)
    assert hostile_index.ok(result), hostile_index.summary(result)
    assert sum(len(p["kinds"]) for p in (result["index_file"], result["ucf101"], result["kinetics600"])) == 27
