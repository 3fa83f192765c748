"""Ground truth as every scorer reads it: lookup by id or file name, dataset category ids."""

import json

import numpy as np
import pytest
from detectron2.data import MetadataCatalog

from panoptic_ext.evaluation import PanopticGroundTruth
from panoptic_ext.formats import PanopticFormatError, read_panoptic_png


def test_lookup_by_id_then_by_file_name(data):
    gt = PanopticGroundTruth("synthetic_panoptic_val_separated")
    ann = json.loads((data / "panoptic_val.json").read_text())["annotations"][0]
    image_id, ids, segments = gt.load({"image_id": ann["image_id"]})
    assert image_id == ann["image_id"] and segments == ann["segments_info"]
    assert np.array_equal(ids, read_panoptic_png(str(data / "panoptic_val" / ann["file_name"])))
    by_name = gt.annotation({"image_id": "other", "file_name": f"x/{ann['file_name'][:-4]}.jpg"})
    assert by_name["image_id"] == ann["image_id"]
    with pytest.raises(PanopticFormatError, match="no ground truth annotation"):
        gt.annotation({"image_id": -5, "file_name": "nope.jpg"})
    assert set(gt.categories) == {1, 3, 5, 7, 8, 10}


def test_contiguous_ids_become_dataset_ids(data):
    gt = PanopticGroundTruth("synthetic_panoptic_val_separated")
    segs = [{"id": 1, "category_id": 2, "isthing": True, "score": 0.9},  # triangle
            {"id": 2, "category_id": 1, "isthing": False}]  # first stuff class after "things"
    out = gt.to_dataset_categories(segs, image_id=4)
    assert [(s["id"], s["category_id"]) for s in out] == [(1, 5), (2, 7)]
    assert "isthing" not in out[0] and out[0]["score"] == 0.9
    assert segs[0]["isthing"] is True  # the model's output is left alone
    with pytest.raises(PanopticFormatError, match="image with ID 4.*thing category_id 9"):
        gt.to_dataset_category({"id": 3, "category_id": 9, "isthing": True}, image_id=4)


def test_missing_metadata_names_dataset_and_purpose():
    MetadataCatalog.get("gt_no_meta").set(thing_classes=["a"])
    with pytest.raises(KeyError, match="'gt_no_meta' has no 'panoptic_root'; tuning needs"):
        PanopticGroundTruth("gt_no_meta", purpose="tuning")
