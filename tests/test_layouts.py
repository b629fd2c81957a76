"""Index files and the converters for the real data sets' layouts, on tiny real folders:
JPEGs/PNGs written with Pillow, MP4s with nestgen's encoder, AVIs with PyAV."""
import io
import json
import math
import os
from collections import Counter
from dataclasses import replace

import av
import numpy as np
import pytest
from PIL import Image

from nestgen.data.index import read_index, write_index
from nestgen.data.layouts import imagenet_index, kinetics600_index, ucf101_index
from nestgen.data.media import ClipSpec, encode_mp4, load_video_clips
from nestgen.data.raw_files import list_raw_files
from pipelines.cli import main as nestgen_main
from pipelines.config import TokenizeConfig

LIMITS = TokenizeConfig().video_limits()


def _jpeg(path, value=128, fmt="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (value, 255 - value, 40)).save(path, fmt)


def _ramp_frames(n=32, size=16):
    """Frame k is uniformly gray at 8*k: its time can be read back from its pixels."""
    return np.repeat((8 * np.arange(n, dtype=np.uint8))[:, None, None], size * size, 1).reshape(n, size, size)


def _mp4(path, n=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(_ramp_frames(n), fps=8))


def _avi(path, n=8, size=16):
    """A real AVI (MPEG-4 part 2), as UCF101 ships them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = size, size, "yuv420p"
        for img in np.repeat(_ramp_frames(n, size)[..., None], 3, -1):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    path.write_bytes(buf.getvalue())


def _by_path(index_url):
    items, failed, label_map = read_index(index_url)
    return {it["rel"]: it for it in items}, failed, label_map


# ---------------------------------------------------------------- the index file


def test_index_rows_resolve_and_malformed_rows_become_failures(tmp_path):
    _jpeg(tmp_path / "imgs" / "a.jpg")
    _jpeg(tmp_path / "imgs" / "b.png", fmt="PNG")
    _jpeg(tmp_path / "elsewhere" / "c.jpg")
    _mp4(tmp_path / "clips" / "v.mp4")
    UP = ""           # the index lives beside the files' folders
    rows = ("path,label,split,start,end\n"
            f"{UP}imgs/a.jpg,cat,train,,\n"                 # 2: relative to the index's folder
            f"{tmp_path}/imgs/b.png,dog,val,,\n"            # 3: absolute path (external files allowed here)
            f"{UP}elsewhere/c.jpg,cat,test,,\n"
            f"{UP}clips/v.mp4,dog,train,0.5,1.5\n"          # 5: a window
            f"{UP}clips/v.mp4,dog,train,,\n"                # 6: the whole clip: another id
            ",cat,train,,\n"                                # 7: no path
            f"{UP}imgs/a.jpg,,train,,\n"                    # 8: no label
            f"{UP}imgs/a.jpg,cat,dev,,\n"                   # 9: unknown split
            f"{UP}imgs/a.jpg,cat,val,1,2\n"                 # 10: window on an image
            f"{UP}clips/v.mp4,dog,train,2,1\n"              # 11: start after end
            f"{UP}clips/v.mp4,dog,train,-1,\n"              # 12: negative
            f"{UP}clips/v.mp4,dog,train,soon,\n"            # 13: not a number
            "notes.txt,cat,train,,\n"                       # 14: not media
            "nope://bucket/x.jpg,cat,train,,\n"             # 15: unknown protocol
            f"{UP}imgs/gone.jpg,bird,train,,\n"             # 16: missing file (its class stays)
            f"{UP}imgs/a.jpg,cat,train,,\n")                # 17: the same id as line 2
    (tmp_path / "index.csv").write_text(rows)
    items, failed, label_map = list_raw_files(str(tmp_path / "index.csv"), allow_external=True)
    assert label_map == {"bird": 0, "cat": 1, "dog": 2}
    got = {(it["uri"], it["split"], it["label"], it["start"], it["end"]) for it in items}
    assert got == {(f"{tmp_path}/imgs/a.jpg", "train", 1, 0.0, math.inf),
                   (f"{tmp_path}/imgs/b.png", "val", 2, 0.0, math.inf),
                   (f"{tmp_path}/elsewhere/c.jpg", "test", 1, 0.0, math.inf),
                   (f"{tmp_path}/clips/v.mp4", "train", 2, 0.5, 1.5),
                   (f"{tmp_path}/clips/v.mp4", "train", 2, 0.0, math.inf)}
    assert {it["id"] for it in items} == {"train/cat/a.jpg", "val/dog/b.png", "test/cat/c.jpg",
                                          "train/dog/v.mp4@0.5-1.5", "train/dog/v.mp4"}
    assert all(it["size"] > 0 for it in items)
    reasons = sorted(f["reason"] for f in failed)
    assert reasons == sorted([
        "index line 7: no path", "index line 8: no label",
        "index line 9: unknown split 'dev' (one of train, val, validation, test)",
        "index line 10: start/end given for an image", "index line 11: start 2 is not before end 1",
        "index line 12: start '-1' must be a finite number >= 0",
        "index line 13: start 'soon' is not a number of seconds",
        "index line 14: not an image or video file by its extension", "index line 15: unknown protocol 'nope'",
        "index line 16: missing file", "index line 17: the same id train/cat/a.jpg as line 2"])
    by_reason = {f["reason"]: f["source_uri"] for f in failed}
    assert by_reason["index line 16: missing file"] == f"{tmp_path}/imgs/gone.jpg"
    assert by_reason["index line 7: no path"].endswith("index.csv#line7")


def test_jsonl_index_and_a_header_without_the_columns(tmp_path):
    _jpeg(tmp_path / "x.jpg")
    (tmp_path / "i.jsonl").write_text('{"path": "x.jpg", "label": "a", "split": "val"}\n\nnot json\n'
                                      '{"path": "x.jpg", "label": "b", "split": "train", "start": null}\n')
    items, failed, label_map = read_index(str(tmp_path / "i.jsonl"))
    assert [(it["label_name"], it["split"]) for it in items] == [("a", "val"), ("b", "train")]
    assert label_map == {"a": 0, "b": 1}
    assert [f["reason"] for f in failed] == ["index line 3: not a JSON object"]
    (tmp_path / "bad.csv").write_text("file,class\nx.jpg,a\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_index(str(tmp_path / "bad.csv"))
    with pytest.raises(FileNotFoundError):
        read_index(str(tmp_path / "absent.csv"))
    # write_index and read_index agree, CSV and JSONL alike.
    for name in ("w.csv", "w.jsonl"):
        write_index(str(tmp_path / name), [{"path": "x.jpg", "label": "a", "split": "test"}])
        assert [(it["uri"], it["split"]) for it in read_index(str(tmp_path / name))[0]] == [
            (f"{tmp_path}/x.jpg", "test")]


def test_a_window_cuts_the_clip_from_that_time(tmp_path):
    data = encode_mp4(_ramp_frames(32), fps=8)           # 4 s at 8 fps; frame k is gray 8*k
    spec = ClipSpec(frames=8, fps=8, size=16, channels=1)
    level = lambda clip: np.round(clip.reshape(len(clip), -1).mean(1) / 8).astype(int).tolist()  # noqa: E731
    assert level(load_video_clips(data, spec, LIMITS, "mp4")[0]) == list(range(0, 8))
    clips = lambda **window: load_video_clips(data, replace(spec, **window), LIMITS, "mp4")  # noqa: E731
    assert level(clips(start=1.0, end=3.0)[0]) == list(range(8, 16))
    two = clips(start=1.5, end=4.0, clips_per_video=3)
    assert [level(c) for c in two] == [list(range(12, 20)), list(range(20, 28))]   # 2.5 s: two whole clips
    with pytest.raises(ValueError, match="shorter than one clip"):
        clips(start=3.5)
    with pytest.raises(ValueError, match="no frames in its window"):
        clips(start=9.0)


# ---------------------------------------------------------------- converters


def test_imagenet_train_folders_and_flat_val_with_its_label_file(tmp_path):
    root = tmp_path / "kaggle"
    data = root / "ILSVRC" / "Data" / "CLS-LOC"        # Kaggle's nesting: the label files three levels up
    for wnid, n in (("n01440764", 3), ("n01443537", 2), ("n09999999", 1)):
        for i in range(n):
            _jpeg(data / "train" / wnid / f"{wnid}_{i}.JPEG", 20 * i)
    for i in range(1, 5):
        _jpeg(data / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    (root / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000001,n01443537 1 2 3 4 n01443537 5 6 7 8\n"
        "ILSVRC2012_val_00000002,n01440764 1 2 3 4\n"
        "ILSVRC2012_val_00000003,n01440764 1 2 3 4\n"
        "ILSVRC2012_val_00000005,n01443537 1 2 3 4\n")          # no such image: written, reported missing
    summary = imagenet_index(str(data), str(data / "index.csv"))
    assert summary["splits"] == {"train": 5, "val": 4} and summary["classes"] == 2
    assert summary["missing"] == 1 and summary["unlabeled"] == 1 and summary["unknown_class"] == 1
    items, failed, label_map = _by_path(str(data / "index.csv"))
    assert label_map == {"n01440764": 0, "n01443537": 1}
    assert items["val/ILSVRC2012_val_00000001.JPEG"]["label_name"] == "n01443537"
    assert items["val/ILSVRC2012_val_00000002.JPEG"]["label"] == 0
    assert items["train/n01443537/n01443537_1.JPEG"]["split"] == "train"
    assert [f["source_uri"].rsplit("/", 1)[1] for f in failed] == ["ILSVRC2012_val_00000005.JPEG"]
    assert len(items) == 8
    # An index outside the data's folder names the files by absolute path; the CLI writes JSONL too.
    assert nestgen_main(["index", "imagenet", str(data), "--out", str(tmp_path / "out" / "in.jsonl")]) == 0
    rows = [json.loads(ln) for ln in (tmp_path / "out" / "in.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and all(r["path"].startswith(str(data)) for r in rows)


def test_imagenet_refuses_a_flat_val_labelled_only_by_the_devkit(tmp_path):
    _jpeg(tmp_path / "train" / "n01440764" / "a.JPEG")
    _jpeg(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("490\n")
    with pytest.raises(FileNotFoundError, match="meta.mat"):
        imagenet_index(str(tmp_path), str(tmp_path / "i.csv"))


def test_ucf101_lists_and_class_index(tmp_path):
    classes = ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    (tmp_path / "ucfTrainTestlist").mkdir()
    (tmp_path / "ucfTrainTestlist" / "classInd.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    files = {c: [f"{c}/v_{c.replace('Handstand', 'HandStand')}_g{g:02d}_c01.avi" for g in (1, 2, 8)]
             for c in classes}
    for c in classes:
        for f in files[c]:
            _avi(tmp_path / "UCF-101" / f)
    _avi(tmp_path / "UCF-101" / "Archery" / "v_Archery_g09_c01.avi")                # in no list
    # Split 1: groups 8+ train, 1-2 test; the lists name HandstandPushups files in another case.
    train1 = "".join(f"{files[c][2].replace('HandStand', 'Handstand')} {i}\n" for i, c in enumerate(classes, 1))
    test1 = "".join(f"{f}\n" for c in classes for f in files[c][:2]) + "Archery/v_Archery_g03_c01.avi\n"
    (tmp_path / "ucfTrainTestlist" / "trainlist01.txt").write_text(train1)
    (tmp_path / "ucfTrainTestlist" / "testlist01.txt").write_text(test1)
    (tmp_path / "ucfTrainTestlist" / "trainlist02.txt").write_text(
        "".join(f"{f} {i}\n" for i, c in enumerate(classes, 1) for f in files[c][:2]))
    (tmp_path / "ucfTrainTestlist" / "testlist02.txt").write_text("".join(f"{files[c][2]}\n" for c in classes))

    s1 = ucf101_index(str(tmp_path), str(tmp_path / "split1.csv"), split_number=1)
    assert s1["splits"] == {"test": 7, "train": 3} and s1["classes"] == 3
    assert s1["missing"] == 1 and s1["unlisted"] == 1
    items, failed, label_map = _by_path(str(tmp_path / "split1.csv"))
    assert label_map == {c: i for i, c in enumerate(sorted(classes))}
    assert items["UCF-101/HandstandPushups/v_HandStandPushups_g08_c01.avi"]["label_name"] == "HandstandPushups"
    assert items["UCF-101/HandstandPushups/v_HandStandPushups_g08_c01.avi"]["split"] == "train"
    assert {it["split"] for rel, it in items.items() if "_g01_" in rel} == {"test"}
    assert [f["reason"] for f in failed] == ["index line 11: missing file"]
    assert nestgen_main(["index", "ucf101", str(tmp_path), "--out", str(tmp_path / "split2.csv"),
                         "--split-number", "2"]) == 0
    items2, failed2, _ = _by_path(str(tmp_path / "split2.csv"))
    assert failed2 == [] and sum(it["split"] == "train" for it in items2.values()) == 6
    assert {it["split"] for rel, it in items2.items() if "_g08_" in rel} == {"test"}


def test_kinetics600_clip_names_from_the_annotation_csv(tmp_path):
    root = tmp_path / "k600"
    _mp4(root / "train" / "abseiling" / "aaa_000010_000020.mp4")
    _mp4(root / "train" / "air drumming" / "bbb_000000_000010.mp4")
    _mp4(root / "val" / "abseiling" / "ccc_000030_000040.mp4")
    (root / "annotations").mkdir()
    (root / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,10,20,train\nair drumming,bbb,0,10,train\nabseiling,ddd,5,15,train\n")
    (root / "annotations" / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,ccc,30,40,val\n")
    (root / "annotations" / "test.csv").write_text("youtube_id,time_start,time_end,split\neee,0,10,test\n")
    s = kinetics600_index(str(root), str(root / "index.csv"))
    assert s["splits"] == {"train": 3, "val": 1} and s["classes"] == 2
    assert s["missing"] == 1 and s["unlabeled"] == 1
    items, failed, label_map = _by_path(str(root / "index.csv"))
    assert label_map == {"abseiling": 0, "air drumming": 1}
    assert items["train/air drumming/bbb_000000_000010.mp4"]["label"] == 1
    assert items["val/abseiling/ccc_000030_000040.mp4"]["end"] == math.inf     # already cut: no window
    assert [f["source_uri"] for f in failed] == [f"{root}/train/abseiling/ddd_000005_000015.mp4"]

    # Whole downloads: each row carries the annotation's window.
    full = tmp_path / "full"
    _mp4(full / "aaa.mp4", n=32)
    (full / "k600.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                   "abseiling,aaa,1,3,train\nabseiling,aaa,2,4,val\n")
    assert nestgen_main(["index", "kinetics600", str(full), "--full-videos", "--out", str(full / "i.csv")]) == 0
    items, failed, _ = read_index(str(full / "i.csv"))
    assert failed == [] and [(it["id"], it["start"], it["end"]) for it in items] == [
        ("train/abseiling/aaa.mp4@1-3", 1.0, 3.0), ("val/abseiling/aaa.mp4@2-4", 2.0, 4.0)]


# ---------------------------------------------------------------- an index through the Ray tokenize step


@pytest.mark.timeout(600)
def test_tokenize_an_index_of_images_and_windowed_videos(ray_local, digits_png, image_tokenizer, video_tokenizer,
                                                         tmp_path):
    import pyarrow.parquet as pq

    from nestgen.data.shards import shard_urls
    from nestgen.tokenizers import clips_to_pixels, load_tokenizer
    from pipelines.tokenize import tokenize_to_shards

    # Images: digit PNGs relabelled through an index (even/odd), plus a malformed row and a missing file;
    # the index names them by absolute path, so it is read with external files allowed.
    pngs = sorted((digits_png / "val").glob("*/*.png"))[:12]
    rows = [{"path": str(p), "label": "even" if int(p.parent.name) % 2 == 0 else "odd",
             "split": "train" if i % 3 else "val"} for i, p in enumerate(pngs)]
    rows += [{"path": str(digits_png / "gone.png"), "label": "odd", "split": "train"},
             {"path": str(pngs[0]), "label": "odd", "split": "holdout"},
             {"path": os.path.relpath(pngs[1], tmp_path), "label": "odd", "split": "test"}]   # '..': refused
    write_index(str(tmp_path / "images.csv"), rows)
    m = tokenize_to_shards(str(tmp_path / "images.csv"), str(tmp_path / "img_shards"), str(image_tokenizer[0]),
                           TokenizeConfig(batch_size=8, allow_external_urls=True))
    assert m["label_map"] == {"even": 0, "odd": 1}
    assert {s: v["rows"] for s, v in m["splits"].items()} == {"train": 8, "val": 4}
    for split in ("train", "val"):
        want = Counter(r["label"] for r in rows[:12] if r["split"] == split)
        assert m["splits"][split]["per_label"] == dict(sorted(want.items()))
    assert sorted(f["reason"] for f in m["failed"]) == [
        "index line 14: missing file", "index line 15: unknown split 'holdout' (one of train, val, validation, test)",
        f"index line 16: path '{os.path.relpath(pngs[1], tmp_path)}' climbs out of its folder with '..'"]
    got = pq.ParquetDataset(shard_urls(str(tmp_path / "img_shards"), "train")).read().to_pylist()
    assert all(m["label_map"][r["label_name"]] == r["label"] for r in got)
    # Changing a label in the index is a new input: the step runs again.
    rows[1]["label"] = "even" if rows[1]["label"] == "odd" else "odd"
    write_index(str(tmp_path / "images.csv"), rows)
    m2 = tokenize_to_shards(str(tmp_path / "images.csv"), str(tmp_path / "img_shards"), str(image_tokenizer[0]),
                            TokenizeConfig(batch_size=8, allow_external_urls=True))
    assert m2["input_fingerprint"] != m["input_fingerprint"]

    # Videos: one file, whole and through a window; the window's tokens are those of its frames.
    video = tmp_path / "clips" / "ramp.mp4"
    video.parent.mkdir()
    frames = np.repeat(_ramp_frames(40, 32)[..., None], 3, -1)      # 5 s at 8 fps
    video.write_bytes(encode_mp4(frames, fps=8))
    write_index(str(tmp_path / "videos.jsonl"), [
        {"path": "clips/ramp.mp4", "label": "ramp", "split": "train"},
        {"path": "clips/ramp.mp4", "label": "ramp", "split": "train", "start": 2.5, "end": 4.5},
        {"path": "clips/ramp.mp4", "label": "ramp", "split": "train", "start": 4.5}])    # 0.5 s: too short
    mv = tokenize_to_shards(str(tmp_path / "videos.jsonl"), str(tmp_path / "vid_shards"), str(video_tokenizer))
    assert mv["splits"]["train"]["rows"] == 2
    assert [f["reason"] for f in mv["failed"]] == ["video has 4 frames at 8.0 fps, shorter than one clip of 8"]
    by_id = {r["id"]: r for r in pq.ParquetDataset(shard_urls(str(tmp_path / "vid_shards"), "train")).read().to_pylist()}
    assert set(by_id) == {"train/ramp/ramp.mp4#clip0", "train/ramp/ramp.mp4@2.5-4.5#clip0"}
    tok = load_tokenizer(str(video_tokenizer))
    data = video.read_bytes()
    for rid, start in (("train/ramp/ramp.mp4#clip0", 0.0), ("train/ramp/ramp.mp4@2.5-4.5#clip0", 2.5)):
        clip = load_video_clips(data, ClipSpec(frames=8, fps=8, size=32, channels=1, start=start), LIMITS, "mp4")[0]
        assert abs(clip.mean() / 8 - (start * 8 + 3.5)) < 0.5          # frames 8*start .. 8*start+7
        want_tokens = tok.encode(clips_to_pixels(clip[None])).reshape(-1).tolist()
        assert by_id[rid]["tokens"] == want_tokens
    assert by_id["train/ramp/ramp.mp4#clip0"]["tokens"] != by_id["train/ramp/ramp.mp4@2.5-4.5#clip0"]["tokens"]


def test_pipeline_raw_data_may_be_an_index(tmp_path):
    from pipelines.config import load_run_config
    from pipelines.dag import StepContext
    from pipelines.steps import build_steps
    _jpeg(tmp_path / "imgs" / "a.jpg")
    write_index(str(tmp_path / "i.csv"), [{"path": "imgs/a.jpg", "label": "cat", "split": "train"}])
    cfg = load_run_config("configs/digits_vq.yaml", [f"pipeline.raw_data={tmp_path / 'i.csv'}"])
    data = build_steps(cfg)[0]
    assert data.name == "data"
    assert data.run(StepContext(str(tmp_path / "run"), {}, None)) == {"raw_url": str(tmp_path / "i.csv"),
                                                                       "written": False}
    # The step's input listing follows the index's rows and the files they name.
    before = data.input_listing()
    write_index(str(tmp_path / "i.csv"), [{"path": "imgs/a.jpg", "label": "dog", "split": "train"}])
    relabelled = data.input_listing()
    _jpeg(tmp_path / "imgs" / "a.jpg", value=3, fmt="PNG")
    assert len({before, relabelled, data.input_listing()}) == 3
    missing = load_run_config("configs/digits_vq.yaml", [f"pipeline.raw_data={tmp_path / 'none.csv'}"])
    with pytest.raises(FileNotFoundError, match="not a folder or an index file"):
        build_steps(missing)[0].run(StepContext(str(tmp_path / "run"), {}, None))
