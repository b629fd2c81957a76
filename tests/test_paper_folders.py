"""The procedural ImageNet- and UCF101-shaped folders of the paper-shapes rehearsal: the layout
each data set ships in, read back by nestgen's own converters and decoders."""
from collections import Counter

import numpy as np

from nestgen.data.index import read_index
from nestgen.data.layouts import imagenet_index, ucf101_index
from nestgen.data.media import ClipSpec, load_image, load_video_clips
from nestgen.data.paper_folders import (imagenet_wnids, ucf101_classes, write_imagenet_folder,
                                        write_ucf101_folder)
from pipelines.config import TokenizeConfig


def test_imagenet_folder_is_read_by_the_imagenet_converter(tmp_path):
    info = write_imagenet_folder(tmp_path / "in", classes=20, train_per_class=2, val_per_class=1, size=256)
    wnids = imagenet_wnids(20)
    assert sorted(p.name for p in (tmp_path / "in" / "train").iterdir()) == wnids
    val = sorted((tmp_path / "in" / "val").iterdir())
    assert len(val) == 20 and all(p.is_file() and p.suffix == ".JPEG" for p in val)     # flat, as ImageNet's

    summary = imagenet_index(str(tmp_path / "in"), str(tmp_path / "in" / "index.csv"))
    assert summary["splits"] == {"train": 40, "val": 20} and summary["classes"] == 20
    assert summary["missing"] == 0 and summary.get("unlabeled", 0) == 0 and info["train"] == 40
    items, failed, label_map = read_index(str(tmp_path / "in" / "index.csv"))
    assert failed == [] and sorted(label_map) == wnids
    val_items = [it for it in items if it["split"] == "val"]
    assert Counter(it["label_name"] for it in val_items) == Counter({w: 1 for w in wnids})
    for it in items:
        if it["split"] == "train":     # train/<wnid>/<wnid>_<n>.JPEG
            assert it["rel"].split("/")[1] == it["label_name"]
    px = load_image(val[0].read_bytes(), 256, 3, TokenizeConfig().max_image_pixels)
    assert px.shape == (256, 256, 3) and px.std() > 10          # a picture, not a flat frame


def test_ucf101_folder_is_read_by_the_ucf101_converter(tmp_path):
    info = write_ucf101_folder(tmp_path / "ucf", classes=10, groups=3, clips_per_group=1, frames=16, size=32)
    names = ucf101_classes(10)
    assert info["train"] == 10 and info["test"] == 20     # groups 1-2 are held out, as in split 1
    summary = ucf101_index(str(tmp_path / "ucf"), str(tmp_path / "ucf" / "index.csv"))
    assert summary["splits"] == {"test": 20, "train": 10} and summary["classes"] == 10
    assert summary["missing"] == 0 and summary["unlisted"] == 0
    items, failed, label_map = read_index(str(tmp_path / "ucf" / "index.csv"))
    assert failed == [] and sorted(label_map) == sorted(names)
    for it in items:                       # UCF-101/<Class>/v_<Class>_gNN_cMM.avi
        cls, group = it["rel"].split("/")[-2], int(it["rel"].split("_g")[1][:2])
        assert it["label_name"] == cls and it["split"] == ("test" if group <= 2 else "train")
    clip = items[0]
    clips = load_video_clips((tmp_path / "ucf" / clip["rel"]).read_bytes(), ClipSpec(frames=16, fps=0, size=32),
                             TokenizeConfig().video_limits(), "avi")
    assert len(clips) == 1 and clips[0].shape == (16, 32, 32, 3)
    assert np.abs(clips[0][-1].astype(int) - clips[0][0]).mean() > 1     # it moves
