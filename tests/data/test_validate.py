"""The pre-training validation pass finds each kind of bad file, names it, and caches."""

import os
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from panoptic_ext.data import (
    SYNTHETIC_CATEGORIES,
    DatasetValidationError,
    register_panoptic,
    rgb_to_id,
    validate_datasets,
)
from panoptic_ext.data import validate as validate_mod
from tests.helpers.data import edit_json, truncate

TRAIN = "synthetic_panoptic_train_separated"


def _validate(names, tmp_path, **kw):
    kw.setdefault("progress", False)
    return validate_datasets(names, cache_dir=tmp_path / "cache", **kw)


def _error(names, tmp_path, **kw) -> str:
    with pytest.raises(DatasetValidationError) as info:
        _validate(names, tmp_path, **kw)
    return str(info.value)


@pytest.fixture
def decodes(monkeypatch):
    """Files actually decoded, counted at the decoder (not from the report's own counts)."""
    seen = []
    real = validate_mod.inspect_file

    def counting(kind, path):
        seen.append((kind, path))
        return real(kind, path)

    monkeypatch.setattr(validate_mod, "inspect_file", counting)
    return seen


def test_clean_data_passes_and_second_run_uses_cache(data, tmp_path, decodes):
    names = [TRAIN, "synthetic_panoptic_val_separated", "synthetic_panoptic_train"]
    first = _validate(names, tmp_path, workers=1)  # in this process, where decodes are counted
    # 6 images + 6 stuff PNGs + 6 panoptic PNGs; the standard dataset shares them.
    assert first.ok and first.num_samples == 10 and first.num_files == 18
    assert first.decoded == 18 and first.cache_hits == 0
    assert len(decodes) == 18 and len(set(decodes)) == 18
    decodes.clear()
    second = _validate(names, tmp_path, workers=1)
    assert second.cache_hits == 18 and second.decoded == 0
    assert decodes == [], "the second pass decoded files the cache holds"
    # A rewritten file is decoded again; the rest still come from the cache.
    img = data / "train" / "000000000001.jpg"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = _validate(names, tmp_path, workers=1)
    assert third.decoded == 1 and third.cache_hits == 17
    assert decodes == [("image", str(img))]
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, "the cache is written atomically"


def test_truncated_jpeg_named_via_process_pool(data, tmp_path, monkeypatch):
    monkeypatch.setattr(validate_mod, "_MIN_FILES_FOR_POOL", 0)
    bad = data / "train" / "000000000002.jpg"
    truncate(bad)
    msg = _error([TRAIN], tmp_path, workers=2, use_cache=False)
    assert str(bad) in msg and "truncated" in msg
    assert "1 bad file(s)" in msg


def test_corrupt_result_is_cached_too(data, tmp_path):
    truncate(data / "train" / "000000000002.jpg")
    _error([TRAIN], tmp_path)
    with pytest.raises(DatasetValidationError) as info:
        _validate([TRAIN], tmp_path)
    assert info.value.report.decoded == 0 and "truncated" in str(info.value)


def test_missing_stuff_folder_prints_conversion_call(data, tmp_path):
    shutil.rmtree(data / "panoptic_stuff_train")
    msg = _error([TRAIN], tmp_path)
    assert "panoptic_stuff_train" in msg and "is missing" in msg
    assert "convert_panoptic_to_semantic(" in msg and str(data / "panoptic_train.json") in msg


def test_missing_coco_stuff_folder_prints_prepare_command(data, tmp_path):
    coco = tmp_path / "d2" / "coco"
    coco.mkdir(parents=True)
    names = register_panoptic(
        "test_cocolike_train2017",
        SYNTHETIC_CATEGORIES,
        image_root=str(data / "train"),
        panoptic_root=str(data / "panoptic_train"),
        panoptic_json=str(data / "panoptic_train.json"),
        sem_seg_root=str(coco / "panoptic_stuff_train2017"),
        instances_json=str(data / "instances_train.json"),
    )
    try:
        msg = _error(["test_cocolike_train2017_separated"], tmp_path)
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    assert f"python datasets/prepare_panoptic_fpn.py --root {tmp_path / 'd2'}" in msg


def test_missing_single_stuff_png_is_listed(data, tmp_path):
    # Detectron2's own loader dies on this with a bare KeyError; the file must be named.
    bad = data / "panoptic_stuff_train" / "000000000003.png"
    bad.unlink()
    msg = _error([TRAIN], tmp_path)
    assert f"{bad}: stuff PNG: file is missing" in msg


def test_stuff_png_wrong_size_and_bad_values(data, tmp_path):
    small = data / "panoptic_stuff_train" / "000000000001.png"
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(small)
    odd = data / "panoptic_stuff_train" / "000000000004.png"
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(odd)
    msg = _error([TRAIN], tmp_path)
    assert f"{small}: stuff PNG is 64x32 but its image 000000000001.jpg is 64x64" in msg
    assert f"{odd}: label value(s) [9] outside 0..3" in msg


def test_json_segment_missing_from_png(data, tmp_path):
    def add_segment(d):
        d["annotations"][0]["segments_info"].append({"id": 4242, "category_id": 7, "iscrowd": 0})

    edit_json(data / "panoptic_val.json", add_segment)
    msg = _error(["synthetic_panoptic_val_separated"], tmp_path)
    png = data / "panoptic_val" / "000001000001.png"
    assert f"{png}: segment id(s) 4242 listed in panoptic_val.json have no pixels in the PNG" in msg


def test_png_segment_missing_from_json(data, tmp_path):
    removed = {}

    def drop_segment(d):
        removed["id"] = d["annotations"][1]["segments_info"].pop()["id"]

    edit_json(data / "panoptic_val.json", drop_segment)
    msg = _error(["synthetic_panoptic_val_separated"], tmp_path)
    png = data / "panoptic_val" / "000001000002.png"
    assert (f"{png}: segment id(s) [{removed['id']}] are in the PNG but not in "
            "panoptic_val.json") in msg
    ids = rgb_to_id(np.asarray(Image.open(png)))
    assert removed["id"] in ids  # the test really removed a segment that is drawn


def test_rgba_panoptic_png_is_named(data, tmp_path):
    png = data / "panoptic_val" / "000001000001.png"
    Image.open(png).convert("RGBA").save(png)
    msg = _error(["synthetic_panoptic_val"], tmp_path)
    assert f"{png}: panoptic PNG: The PNG {png} is not an RGB image (mode RGBA" in msg


def test_unknown_category_in_panoptic_json(data, tmp_path):
    def set_category(d):
        d["annotations"][0]["segments_info"][0]["category_id"] = 99

    edit_json(data / "panoptic_train.json", set_category)
    # The standard dataset's Detectron2 loader fails (KeyError 99): still reported per file.
    for name in (TRAIN, "synthetic_panoptic_train"):
        msg = _error([name], tmp_path)
        assert "000000000001.png: segment" in msg and "has category_id 99" in msg


def test_unknown_category_in_instances_json(data, tmp_path):
    edit_json(data / "instances_train.json", lambda d: d["annotations"][0].update(category_id=99))
    msg = _error([TRAIN], tmp_path)
    assert f"{data / 'instances_train.json'}: annotation 1" in msg and "category_id 99" in msg


def test_box_outside_image(data, tmp_path):
    box = [50.0, 50.0, 40.0, 40.0]  # XYWH in a 64x64 image
    edit_json(data / "instances_train.json", lambda d: d["annotations"][0].update(bbox=box))
    msg = _error([TRAIN], tmp_path)
    assert "instance box [50.0, 50.0, 40.0, 40.0] (instances_train.json) is not inside" in msg


def test_more_bad_files_than_max_report(data, tmp_path):
    for jpg in sorted((data / "train").glob("*.jpg")):
        truncate(jpg)
    msg = _error([TRAIN], tmp_path, max_report=2)
    assert "4 bad file(s)" in msg and "... and 2 more bad file(s)" in msg
    assert msg.count("truncated") == 2


def test_unregistered_name_suggests_close_match():
    with pytest.raises(KeyError, match="Did you mean 'synthetic_panoptic_train_separated'"):
        validate_datasets(["synthetic_panoptic_train_separatd"], progress=False, use_cache=False)


def test_duplicate_image_id_named(data, tmp_path):
    def duplicate(d):
        first = d["annotations"][0]["image_id"]
        d["annotations"][1]["image_id"] = first
        for img in d["images"]:
            if img["file_name"].startswith("000001000002"):
                img["id"] = first

    edit_json(data / "panoptic_val.json", duplicate)
    msg = _error(["synthetic_panoptic_val_separated"], tmp_path)
    assert "panoptic_val.json" in msg and "is used by 2 images" in msg
    assert "000001000001" in msg and "000001000002" in msg



def _first_segment(data):
    import json

    d = json.load(open(data / "panoptic_val.json"))
    ann = d["annotations"][0]
    return ann["image_id"], ann["file_name"], ann["segments_info"][0]


def test_wrong_json_area_and_bbox_named_with_both_values(data, tmp_path):
    image_id, file_name, seg = _first_segment(data)

    def corrupt(d):
        d["annotations"][0]["segments_info"][0]["area"] = seg["area"] + 7
        d["annotations"][0]["segments_info"][1]["bbox"] = [0, 0, 1, 1]

    edit_json(data / "panoptic_val.json", corrupt)
    msg = _error(["synthetic_panoptic_val_separated"], tmp_path, max_report=10)
    png = data / "panoptic_val" / file_name
    assert (f"{png}: segment {seg['id']} of image {image_id} in panoptic_val.json: JSON area "
            f"{seg['area'] + 7} but {seg['area']} pixels in the PNG") in msg
    assert "JSON bbox [0, 0, 1, 1] but the PNG's pixels span [" in msg


def test_on_bad_area_fix_writes_a_corrected_copy(data, tmp_path, caplog):
    import json

    name = "synthetic_panoptic_val_separated"
    image_id, _, seg = _first_segment(data)
    edit_json(data / "panoptic_val.json",
              lambda d: d["annotations"][0]["segments_info"][0].update(area=3))
    original = MetadataCatalog.get(name).panoptic_json
    with caplog.at_level("WARNING", logger="panoptic_ext.data.validate"):
        _validate([name], tmp_path, on_bad_area="fix")
    fixed = MetadataCatalog.get(name).panoptic_json
    assert fixed != original and fixed.startswith(str(tmp_path / "cache" / "fixed"))
    assert json.load(open(fixed))["annotations"][0]["segments_info"][0]["area"] == seg["area"]
    assert json.load(open(original))["annotations"][0]["segments_info"][0]["area"] == 3
    assert f"image {image_id} segment {seg['id']}: area 3 -> {seg['area']}" in caplog.text
    with pytest.raises(ValueError, match="on_bad_area='repair'"):
        _validate([name], tmp_path, on_bad_area="repair")


def test_segment_areas_and_boxes():
    ids = np.zeros((5, 6), np.uint32)
    ids[1:3, 2:5] = 7
    ids[4, 0] = 9
    values, counts, boxes = validate_mod.segment_areas_and_boxes(ids)
    assert values.tolist() == [0, 7, 9] and counts.tolist() == [23, 6, 1]
    assert boxes.tolist() == [[0, 0, 6, 5], [2, 1, 3, 2], [0, 4, 1, 1]]
