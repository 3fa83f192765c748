"""The files derived from a user's folder: where they go, when they are rebuilt, and errors that
name the bad file."""

import json
import os
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from panoptic_ext.data import PanopticFormatError, prepare_panoptic_dataset, validate_datasets
from panoptic_ext.data.custom import (
    default_dataset_cache_dir,
    get_panoptic_folder,
    register_panoptic_dataset,
)
from tests.helpers.data import edit_json


def _copy(folders, kind, split, dst):
    """A private copy of one split, so a test may edit it."""
    image_root, pan_json, pan_root = folders[kind][split]
    shutil.copytree(image_root, dst / "images")
    shutil.copytree(pan_root, dst / "panoptic")
    shutil.copy(pan_json, dst / "pan.json")
    return str(dst / "images"), str(dst / "pan.json"), str(dst / "panoptic")


def test_up_to_date_cache_is_kept_and_a_changed_source_rebuilds(folders, tmp_path):
    image_root, pan_json, pan_root = _copy(folders, "full", "val", tmp_path)
    register_panoptic_dataset("mine_d", image_root, pan_json, pan_root, cache_dir=tmp_path / "c")
    assert prepare_panoptic_dataset("mine_d") is True
    assert prepare_panoptic_dataset("mine_d_separated") is False  # same folder, up to date
    folder = get_panoptic_folder("mine_d")
    assert sorted(os.listdir(folder.sem_seg_root)) == sorted(os.listdir(pan_root))
    png = os.path.join(pan_root, os.listdir(pan_root)[0])
    st = os.stat(png)
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert prepare_panoptic_dataset("mine_d") is True  # a source changed: rebuilt
    leftovers = [f for f in os.listdir(folder.cache) if f.endswith(".tmp")]
    assert not leftovers, "atomic writes leave no temp file"


def test_default_cache_is_next_to_the_data(folders, tmp_path):
    image_root, pan_json, pan_root = _copy(folders, "full", "val", tmp_path)
    register_panoptic_dataset("mine_next", image_root, pan_json, pan_root)
    assert get_panoptic_folder("mine_next").cache == os.path.join(
        f"{pan_root}_panoptic_ext", "pan")


def test_read_only_data_folder_uses_user_cache(folders, monkeypatch):
    image_root, pan_json, pan_root = folders["full"]["val"]
    real = os.makedirs

    def read_only(path, *args, **kwargs):  # tests run as root: chmod would not stop writes
        if "_panoptic_ext" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", read_only)
    register_panoptic_dataset("mine_ro", image_root, pan_json, pan_root)
    folder = get_panoptic_folder("mine_ro_separated")
    assert folder.cache.startswith(str(default_dataset_cache_dir()))
    assert folder.cache.startswith(os.path.join(os.environ["XDG_CACHE_HOME"], "panoptic_ext"))
    # Lazy: the validation pass itself triggers the derivation.
    assert validate_datasets(["mine_ro_separated"], progress=False).num_samples == 2
    assert os.path.isfile(folder.instances_json)


def test_segment_missing_from_png_is_named(folders, tmp_path):
    src = folders["full"]["val"]
    data = json.loads(open(src[1]).read())
    data["annotations"][1]["segments_info"].append({"id": 4242, "category_id": 1000})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    register_panoptic_dataset("mine_bad", src[0], bad, src[2], cache_dir=tmp_path)
    assert MetadataCatalog.get("mine_bad_separated").thing_classes == ["disc", "block"]
    with pytest.raises(PanopticFormatError) as e:
        DatasetCatalog.get("mine_bad_separated")
    msg = str(e.value)
    assert "image 101" in msg and "4242 ('block')" in msg and "no pixels" in msg
    assert "val_001.png" in msg


def test_png_problems_are_all_listed(folders, tmp_path):
    image_root, pan_json, pan_root = _copy(folders, "full", "train", tmp_path)
    rgba = os.path.join(pan_root, "train_000.png")
    Image.open(rgba).convert("RGBA").save(rgba)
    os.remove(os.path.join(pan_root, "train_001.png"))
    drawn = {}

    def drop_segment(d):
        drawn["id"] = d["annotations"][2]["segments_info"].pop()["id"]

    edit_json(pan_json, drop_segment)
    register_panoptic_dataset("mine_png", image_root, pan_json, pan_root, cache_dir=tmp_path)
    with pytest.raises(PanopticFormatError) as e:
        prepare_panoptic_dataset("mine_png")
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert f"the PNG {rgba} is not an RGB image" in msg and "ID 100" in msg
    assert "train_001.png (image 101): panoptic PNG listed in pan.json is missing" in msg
    assert f"[{drawn['id']}] are in the PNG but not in pan.json" in msg
    assert not os.path.exists(get_panoptic_folder("mine_png").instances_json)


def test_categories_changed_after_registration(folders, tmp_path):
    image_root, pan_json, pan_root = _copy(folders, "full", "val", tmp_path)
    register_panoptic_dataset("mine_cat", image_root, pan_json, pan_root, cache_dir=tmp_path)
    edit_json(pan_json, lambda d: d["categories"][0].update(name="renamed"))
    with pytest.raises(PanopticFormatError, match="changed after it was registered"):
        prepare_panoptic_dataset("mine_cat")


def test_derived_instances_match_the_pngs(folders, tmp_path):
    from pycocotools import mask as mask_util

    from panoptic_ext.formats import read_panoptic_png

    image_root, pan_json, pan_root = folders["thingsonly"]["val"]
    register_panoptic_dataset("mine_inst", image_root, pan_json, pan_root, cache_dir=tmp_path)
    prepare_panoptic_dataset("mine_inst")
    inst = json.loads(open(get_panoptic_folder("mine_inst").instances_json).read())
    segments = {(a["image_id"], s["category_id"]): s
                for a in json.loads(open(pan_json).read())["annotations"]
                for s in a["segments_info"]}
    by_image = {i["id"]: i for i in inst["images"]}
    assert len(inst["annotations"]) > 0
    for ann in inst["annotations"]:
        ids = read_panoptic_png(os.path.join(pan_root,
                                             by_image[ann["image_id"]]["panoptic_file_name"]))
        mask = mask_util.decode(ann["segmentation"]).astype(bool)
        sids = set(np.unique(ids[mask]).tolist())
        assert len(sids) == 1 and mask.sum() == ann["area"] == (ids == sids.pop()).sum()
        assert (ann["image_id"], ann["category_id"]) in segments
