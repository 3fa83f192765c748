"""COCO panoptic -> Panoptic FPN semantic PNGs, checked pixel by pixel on hand-made data."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from panoptic_ext.data import (
    PanopticFormatError,
    convert_panoptic_to_semantic,
    id_to_rgb,
    prepare_coco_panoptic_fpn,
)
from tests.helpers.data import load_script

# Non-contiguous ids, things and stuff interleaved: stuff sorted by id is 3 -> 1, 11 -> 2.
CATEGORIES = [
    {"id": 2, "name": "cat", "isthing": 1, "color": [1, 2, 3]},
    {"id": 3, "name": "road", "isthing": 0, "color": [4, 5, 6]},
    {"id": 7, "name": "dog", "isthing": 1, "color": [7, 8, 9]},
    {"id": 11, "name": "wall", "isthing": 0, "color": [10, 11, 12]},
]
# Segment ids that need all three RGB channels; 0 is void.
CAT, DOG, ROAD, WALL = 300, 70_000, 5, 1_000_000
IDS_A = np.array(
    [
        [0, CAT, CAT, ROAD, ROAD, ROAD],
        [WALL, CAT, CAT, ROAD, DOG, DOG],
        [WALL, WALL, 0, ROAD, DOG, DOG],
        [WALL, WALL, WALL, ROAD, ROAD, 0],
    ]
)
EXPECTED_A = np.array(
    [
        [255, 0, 0, 1, 1, 1],
        [2, 0, 0, 1, 0, 0],
        [2, 2, 255, 1, 0, 0],
        [2, 2, 2, 1, 1, 255],
    ],
    np.uint8,
)
IDS_B = np.array([[ROAD, ROAD, 0, DOG, DOG, DOG]] * 4)
EXPECTED_B = np.array([[1, 1, 255, 0, 0, 0]] * 4, np.uint8)
SEGS_A = [
    {"id": CAT, "category_id": 2},
    {"id": DOG, "category_id": 7},
    {"id": ROAD, "category_id": 3},
    {"id": WALL, "category_id": 11},
]
SEGS_B = [{"id": ROAD, "category_id": 3}, {"id": DOG, "category_id": 7, "iscrowd": 1}]


def _make_coco(root, split="val2017", images=None):
    """Write coco/annotations/panoptic_{split}.json and coco/panoptic_{split}/*.png."""
    images = images or [("a", IDS_A, SEGS_A), ("b", IDS_B, SEGS_B)]
    coco = root / "coco"
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    (coco / f"panoptic_{split}").mkdir(exist_ok=True)
    data = {"images": [], "annotations": [], "categories": CATEGORIES}
    for i, (stem, ids, segs) in enumerate(images):
        Image.fromarray(id_to_rgb(ids)).save(coco / f"panoptic_{split}" / f"{stem}.png")
        data["images"].append(
            {"id": i, "file_name": f"{stem}.jpg", "height": ids.shape[0], "width": ids.shape[1]}
        )
        data["annotations"].append(
            {"image_id": i, "file_name": f"{stem}.png", "segments_info": segs}
        )
    (coco / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(data))
    return coco


def _read(path):
    return np.array(Image.open(path))


@pytest.mark.parametrize("workers", [1, 2])
def test_every_pixel_matches_hand_computed_labels(tmp_path, workers, caplog):
    coco = _make_coco(tmp_path)
    with caplog.at_level(logging.WARNING):
        results = prepare_coco_panoptic_fpn(tmp_path, workers=workers, progress=False)
    assert list(results) == ["val2017"]
    assert "train2017" in caplog.text and "Skipping" in caplog.text
    out = coco / "panoptic_stuff_val2017"
    a, b = _read(out / "a.png"), _read(out / "b.png")
    assert a.dtype == np.uint8 and a.ndim == 2
    np.testing.assert_array_equal(a, EXPECTED_A)
    np.testing.assert_array_equal(b, EXPECTED_B)


def test_up_to_date_outputs_are_kept_and_stale_ones_refreshed(tmp_path):
    coco = _make_coco(tmp_path)
    out = coco / "panoptic_stuff_val2017"
    first = prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)["val2017"]
    assert (first.written, first.refreshed, first.up_to_date) == (2, 0, 0)
    (out / "notes.txt").write_text("not ours")

    again = prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)["val2017"]
    assert (again.written, again.refreshed, again.up_to_date) == (0, 0, 2)

    src = coco / "panoptic_val2017" / "a.png"
    newer = os.path.getmtime(out / "a.png") + 10
    os.utime(src, (newer, newer))
    (out / "b.png").unlink()
    third = prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)["val2017"]
    assert (third.written, third.refreshed, third.up_to_date) == (1, 1, 0)
    np.testing.assert_array_equal(_read(out / "a.png"), EXPECTED_A)
    assert (out / "notes.txt").read_text() == "not ours"


@pytest.mark.parametrize("workers", [1, 2])
def test_corrupt_png_error_names_the_file(tmp_path, workers):
    coco = _make_coco(tmp_path)
    bad = coco / "panoptic_val2017" / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(PanopticFormatError, match=str(bad)):
        prepare_coco_panoptic_fpn(tmp_path, workers=workers, progress=False)


def test_json_segment_missing_from_png_names_image_and_segment(tmp_path):
    segs = SEGS_B + [{"id": 4242, "category_id": 3}]
    _make_coco(tmp_path, images=[("b", IDS_B, segs)])
    with pytest.raises(PanopticFormatError, match=r"image 0: segment id\(s\) 4242 listed in "
                       r"panoptic_val2017.json have no pixels"):
        prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)


def test_png_segment_missing_from_json_and_unknown_category(tmp_path):
    _make_coco(tmp_path, images=[("b", IDS_B, SEGS_B[:1])])
    with pytest.raises(PanopticFormatError, match=str(DOG)):
        prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)
    _make_coco(tmp_path, images=[("b", IDS_B, [{"id": ROAD, "category_id": 99}] + SEGS_B[1:])])
    with pytest.raises(PanopticFormatError, match="category_id 99"):
        prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)


def test_size_mismatch_and_missing_png(tmp_path):
    coco = _make_coco(tmp_path)
    data = json.loads((coco / "annotations" / "panoptic_val2017.json").read_text())
    data["images"][1]["height"] = 5
    (coco / "annotations" / "panoptic_val2017.json").write_text(json.dumps(data))
    with pytest.raises(PanopticFormatError, match="b.png"):
        prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)
    (coco / "panoptic_val2017" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)


def test_half_present_split_is_an_error(tmp_path):
    coco = _make_coco(tmp_path, split="train2017")
    (coco / "annotations" / "panoptic_train2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="panoptic_train2017.json"):
        prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)


def test_direct_conversion_and_script(tmp_path, capsys, monkeypatch):
    coco = _make_coco(tmp_path)
    stats = convert_panoptic_to_semantic(
        coco / "annotations" / "panoptic_val2017.json",
        coco / "panoptic_val2017",
        tmp_path / "elsewhere",
        workers=1,
        progress=False,
    )
    assert stats.total == 2
    np.testing.assert_array_equal(_read(tmp_path / "elsewhere" / "b.png"), EXPECTED_B)

    script = load_script("prepare_panoptic_fpn")
    assert script.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    assert "val2017: 2 semantic PNGs" in capsys.readouterr().out
    np.testing.assert_array_equal(_read(coco / "panoptic_stuff_val2017" / "a.png"), EXPECTED_A)

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(empty))
    assert script.main([]) == 1
    assert "no COCO panoptic split" in capsys.readouterr().err


def test_rgba_png_is_refused_and_no_temp_file_is_left(tmp_path):
    coco = _make_coco(tmp_path)
    out = coco / "panoptic_stuff_val2017"
    prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)
    assert sorted(os.listdir(out)) == ["a.png", "b.png"], "atomic writes leave no temp file"
    rgba = coco / "panoptic_val2017" / "a.png"
    Image.open(rgba).convert("RGBA").save(rgba)
    with pytest.raises(PanopticFormatError, match=f"{rgba} is not an RGB image"):
        prepare_coco_panoptic_fpn(tmp_path, workers=1, progress=False)
    np.testing.assert_array_equal(_read(out / "a.png"), EXPECTED_A)  # old output untouched
