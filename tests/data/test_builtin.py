"""The builtin synthetic datasets load, visualize and evaluate through Detectron2 like COCO does.

Each evaluator is fed the ground truth as a prediction, so any id-map or format mistake shows
up as a score below 100.
"""

import importlib

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from detectron2.structures import BitMasks, BoxMode, Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from pycocotools import mask as mask_util

from panoptic_ext.data import (
    SYNTHETIC_DATASET_NAMES,
    builtin,
    generate_synthetic_dataset,
    register_panoptic,
    register_synthetic,
    rgb_to_id,
)

TRAIN, VAL = "synthetic_panoptic_train_separated", "synthetic_panoptic_val_separated"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2root")
    generate_synthetic_dataset(root, seed=1, num_train=4, num_val=5, size=96, progress=False)
    return root


@pytest.fixture
def registered(root, monkeypatch):
    """Point the names at the generated data via the env var, then restore the default root."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    register_synthetic()  # reads DETECTRON2_DATASETS now
    yield root
    monkeypatch.undo()
    register_synthetic()


def test_names_and_metadata_registered_at_import():
    for name in SYNTHETIC_DATASET_NAMES:
        assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(TRAIN)
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 5: 2}
    assert meta.stuff_classes == ["things", "sky", "ground", "water"]
    assert meta.stuff_dataset_id_to_contiguous_id == {0: 0, 7: 1, 8: 2, 10: 3}
    assert len(meta.stuff_colors) == 4 and len(meta.thing_colors) == 3
    for key in ("panoptic_root", "panoptic_json", "image_root", "json_file", "sem_seg_root"):
        assert "synthetic_panoptic" in getattr(meta, key)
    std = MetadataCatalog.get("synthetic_panoptic_val")
    assert std.evaluator_type == "coco_panoptic_seg"
    assert std.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1, 5: 2}
    assert std.stuff_dataset_id_to_contiguous_id == {7: 3, 8: 4, 10: 5}
    assert MetadataCatalog.get("synthetic_panoptic_val_stuffonly").evaluator_type == "sem_seg"


def test_lazy_registration_and_clear_error_when_missing(tmp_path):
    register_synthetic(tmp_path)
    try:
        with pytest.raises(FileNotFoundError, match="prepare_synthetic.py"):
            DatasetCatalog.get(VAL)
    finally:
        register_synthetic()


def test_reload_and_reregister_do_not_crash():
    importlib.reload(builtin)
    assert set(register_synthetic()) == set(SYNTHETIC_DATASET_NAMES)
    with pytest.raises(ValueError, match="both"):
        register_panoptic("x", [], "i", "p", "j", sem_seg_root="s")


def test_separated_dicts(registered):
    dicts = DatasetCatalog.get(TRAIN)
    assert len(dicts) == 4
    for d in dicts:
        assert d["file_name"].endswith(".jpg") and d["sem_seg_file_name"].endswith(".png")
        assert d["height"] == d["width"] == 96
        assert d["annotations"]
        for a in d["annotations"]:
            assert a["category_id"] in (0, 1, 2) and a["bbox_mode"] == BoxMode.XYWH_ABS
            assert len(a["bbox"]) == 4 and isinstance(a["segmentation"], dict)
        sem = np.array(Image.open(d["sem_seg_file_name"]))
        assert set(np.unique(sem)) <= {0, 1, 2, 3, 255}
    std = DatasetCatalog.get("synthetic_panoptic_train")
    assert {d["file_name"] for d in std} == {d["file_name"] for d in dicts}
    for d in std:
        for s in d["segments_info"]:
            assert s["category_id"] in range(6)
            assert s["isthing"] == (s["category_id"] < 3)


def test_visualizer_draws_both_styles(registered):
    for name in (VAL, "synthetic_panoptic_val"):
        d = DatasetCatalog.get(name)[0]
        img = np.array(Image.open(d["file_name"]))
        out = Visualizer(img, MetadataCatalog.get(name)).draw_dataset_dict(d).get_image()
        assert out.shape == img.shape and not np.array_equal(out, img)


def _gt_instances(d):
    masks = np.stack([mask_util.decode(a["segmentation"]).astype(bool) for a in d["annotations"]])
    inst = Instances((d["height"], d["width"]))
    inst.pred_masks = torch.from_numpy(masks)
    inst.pred_boxes = BitMasks(inst.pred_masks).get_bounding_boxes()
    inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]])
    inst.scores = torch.ones(len(masks))
    return inst


def _gt_as_separated_prediction(d):
    """Combine instance masks and the semantic PNG the way Panoptic FPN's merge step outputs."""
    sem = np.array(Image.open(d["sem_seg_file_name"]))
    pan = np.zeros(sem.shape, np.int32)
    segments = []
    inst = _gt_instances(d)
    for i, (m, c) in enumerate(
        zip(inst.pred_masks.numpy(), inst.pred_classes.tolist(), strict=True)
    ):
        pan[m] = i + 1
        segments.append({"id": i + 1, "category_id": c, "isthing": True})
    for label in np.unique(sem):
        if label not in (0, 255):
            pan[sem == label] = 100 + label
            segments.append({"id": 100 + int(label), "category_id": int(label), "isthing": False})
    return {"panoptic_seg": (torch.from_numpy(pan), segments)}


def _gt_as_standard_prediction(d):
    pan = rgb_to_id(np.array(Image.open(d["pan_seg_file_name"]))).astype(np.int32)
    segments = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in d["segments_info"]
    ]
    return {"panoptic_seg": (torch.from_numpy(pan), segments)}


@pytest.mark.parametrize(
    "name, to_prediction",
    [(VAL, _gt_as_separated_prediction), ("synthetic_panoptic_val", _gt_as_standard_prediction)],
)
def test_panoptic_evaluator_gives_pq_100_on_ground_truth(registered, tmp_path, name, to_prediction):
    dicts = DatasetCatalog.get(name)
    evaluator = COCOPanopticEvaluator(name, str(tmp_path))
    evaluator.reset()
    for d in dicts:
        evaluator.process([d], [to_prediction(d)])
    res = evaluator.evaluate()["panoptic_seg"]
    for key in ("PQ", "PQ_th", "PQ_st", "SQ", "RQ"):
        assert res[key] == pytest.approx(100.0), (key, res)


def test_coco_evaluator_gives_ap_100_on_ground_truth(registered, tmp_path):
    dicts = DatasetCatalog.get(VAL)
    evaluator = COCOEvaluator(VAL, tasks=("bbox", "segm"), distributed=False, output_dir=None)
    evaluator.reset()
    for d in dicts:
        evaluator.process([d], [{"instances": _gt_instances(d)}])
    res = evaluator.evaluate()
    assert res["bbox"]["AP"] == pytest.approx(100.0)
    assert res["segm"]["AP"] == pytest.approx(100.0)


def test_sem_seg_evaluator_gives_miou_100_on_ground_truth(registered):
    dicts = DatasetCatalog.get(VAL)
    evaluator = SemSegEvaluator(VAL, distributed=False)
    evaluator.reset()
    for d in dicts:
        sem = torch.from_numpy(np.array(Image.open(d["sem_seg_file_name"])).astype(np.int64))
        logits = torch.nn.functional.one_hot(sem.clamp(max=3), 4).permute(2, 0, 1).float()
        evaluator.process([d], [{"sem_seg": logits}])
    res = evaluator.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0) and res["pACC"] == pytest.approx(100.0)
