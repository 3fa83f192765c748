"""Cityscapes' own AP and mIoU (cityscapesScripts) on predictions made from the ground truth
of the tiny raw tree: perfect ones score 100, damaged ones less, and nothing is written
outside the output folder."""

import os
import re

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.structures import Instances
from PIL import Image

from panoptic_ext import add_panoptic_config
from panoptic_ext.data.cityscapes import CITYSCAPES_CATEGORIES
from panoptic_ext.data.metadata import panoptic_separated_metadata
from panoptic_ext.evaluation import cityscapes as cs_eval
from panoptic_ext.evaluation.build import build_panoptic_evaluators
from panoptic_ext.evaluation.cityscapes import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    cityscapes_image_id,
)
from tests.helpers.cityscapes import PERSON, ROAD, write_cityscapes_tree

pytest.importorskip("cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling")
NAME = "test_cityscapes_eval_val"


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    root = tmp_path_factory.mktemp("cs_eval")
    write_cityscapes_tree(root, splits=("val",))
    gt_dir = root / "cityscapes" / "gtFine" / "val"
    if NAME in MetadataCatalog.list():
        MetadataCatalog.remove(NAME)
    MetadataCatalog.get(NAME).set(gt_dir=str(gt_dir),
                                  **panoptic_separated_metadata(CITYSCAPES_CATEGORIES))
    files = sorted(gt_dir.rglob("*_gtFine_instanceIds.png"))
    yield root, [np.array(Image.open(f)).astype(np.int64) for f in files], files
    MetadataCatalog.remove(NAME)


def _outputs(inst_ids, drop_person=False):
    """Model outputs equal to the ground truth (optionally without the person)."""
    meta = MetadataCatalog.get(NAME)
    things = meta.thing_dataset_id_to_contiguous_id
    stuff = meta.stuff_dataset_id_to_contiguous_id
    masks, classes, segments = [], [], []
    panoptic = np.zeros(inst_ids.shape, np.int64)
    for value in np.unique(inst_ids):
        label = int(value) // 1000 if value >= 1000 else int(value)
        if drop_person and label == PERSON:
            label = ROAD  # painted as road, not detected
        if label in things:
            if value >= 1000:  # an instance (below 1000: a crowd region)
                masks.append(inst_ids == value)
                classes.append(things[label])
            seg = {"isthing": True, "category_id": things[label]}
        elif label in stuff:
            seg = {"isthing": False, "category_id": stuff[label]}
        else:
            continue  # void (ego vehicle): no segment
        seg["id"] = len(segments) + 1
        panoptic[inst_ids == value] = seg["id"]
        segments.append(seg)
    inst = Instances(inst_ids.shape)
    inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(
        (0, *inst_ids.shape), dtype=torch.bool)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    inst.scores = torch.linspace(0.9, 0.5, len(classes))
    return {"instances": inst, "panoptic_seg": (torch.from_numpy(panoptic), segments)}


def _evaluate(evaluator, gt, **kw):
    root, id_maps, files = gt
    evaluator.reset()
    for ids, f in zip(id_maps, files, strict=True):
        image = root / "cityscapes/leftImg8bit/val" / f.parent.name / (
            cityscapes_image_id(str(f)) + "_leftImg8bit.png")
        evaluator.process([{"file_name": str(image), "image_id": cityscapes_image_id(str(f))}],
                          [_outputs(ids, **kw)])
    return evaluator.evaluate()


def test_image_id():
    assert cityscapes_image_id("/a/frankfurt/frankfurt_000000_000019_leftImg8bit.png") == \
        "frankfurt_000000_000019"
    assert cityscapes_image_id("x/ulm_000001_000002_gtFine_labelIds.png") == "ulm_000001_000002"


def test_perfect_and_damaged_predictions(gt, tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_DATASET", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    inst_eval = CityscapesInstanceEvaluator(NAME, str(out))
    sem_eval = CityscapesSemSegEvaluator(NAME, str(out))

    ap = _evaluate(inst_eval, gt)["cityscapes_instance_seg"]
    assert ap["AP"] == pytest.approx(100) and ap["AP50"] == pytest.approx(100)
    assert ap["AP/car"] == pytest.approx(100) and ap["AP/person"] == pytest.approx(100)
    assert "AP/bus" not in ap  # no ground truth, no prediction: left out, not NaN
    iou = _evaluate(sem_eval, gt)["cityscapes_sem_seg"]
    assert iou["mIoU"] == pytest.approx(100)
    assert {"IoU/road", "IoU/sky", "IoU/building", "IoU/car", "IoU/person"} == {
        k for k in iou if k.startswith("IoU/")}

    ap = _evaluate(inst_eval, gt, drop_person=True)["cityscapes_instance_seg"]
    assert ap["AP/person"] == 0 and ap["AP/car"] == pytest.approx(100)
    assert ap["AP"] == pytest.approx(50)
    iou = _evaluate(sem_eval, gt, drop_person=True)["cityscapes_sem_seg"]
    assert iou["IoU/person"] == 0 and 0 < iou["IoU/road"] < 100
    assert iou["mIoU"] == pytest.approx(sum(v for k, v in iou.items()
                                            if k.startswith("IoU/")) / 5)

    # Everything was written under out/ and removed after scoring.
    assert list(cwd.iterdir()) == []
    assert list(out.iterdir()) == []


def test_matching_in_worker_processes(gt, tmp_path, monkeypatch):
    monkeypatch.setattr(cs_eval, "_IMAGES_PER_WORKER", 1)  # 2 images: 2 workers
    ap = _evaluate(CityscapesInstanceEvaluator(NAME, str(tmp_path)), gt, drop_person=True)
    assert ap["cityscapes_instance_seg"]["AP/car"] == pytest.approx(100)
    assert ap["cityscapes_instance_seg"]["AP/person"] == 0
    # cityscapesScripts' sys.exit on a bad file, in a worker, is an error here (no hang).
    ev = CityscapesInstanceEvaluator(NAME, str(tmp_path))
    ev.reset()
    root, _, files = gt
    for f in files:
        (tmp_path / "cityscapes_instance_eval" / (cityscapes_image_id(str(f)) + "_pred.txt")
         ).write_text("two fields\n")
    with pytest.raises(RuntimeError, match="Invalid prediction file"):
        ev.evaluate()
    ev.reset()
    for f in files:
        (tmp_path / "cityscapes_instance_eval" / (cityscapes_image_id(str(f)) + "_pred.txt")
         ).write_text("mask.png car 0.5\n")
    with pytest.raises(RuntimeError, match="_pred.txt failed: ValueError"):
        ev.evaluate()


def test_no_prediction_files_is_a_warning_not_a_crash(gt, tmp_path):
    ev = CityscapesSemSegEvaluator(NAME, str(tmp_path))
    ev.reset()
    assert ev.evaluate() == {}


def test_missing_gt_dir_is_named():
    MetadataCatalog.get("test_cityscapes_eval_no_gt").set(
        **panoptic_separated_metadata(CITYSCAPES_CATEGORIES))
    with pytest.raises(KeyError, match="gt_dir"):
        CityscapesInstanceEvaluator("test_cityscapes_eval_no_gt")


@pytest.mark.parametrize("cls,output,metric", [
    (CityscapesInstanceEvaluator, "instances", "instance AP"),
    (CityscapesSemSegEvaluator, "panoptic_seg", "mIoU"),
])
def test_missing_model_output_is_named(gt, tmp_path, cls, output, metric):
    """A model configured without the output an evaluator reads is told which setting to fix,
    before anything of the batch is written."""
    ev = cls(NAME, str(tmp_path))
    ev.reset()
    root, id_maps, files = gt
    good = {"file_name": str(files[0]), "image_id": cityscapes_image_id(str(files[0]))}
    message = (f"Cityscapes {metric} needs the model's '{output}' output; keep it in "
               "MODEL.PANOPTIC_EXT.INFERENCE_OUTPUTS")
    with pytest.raises(KeyError, match=re.escape(message)):
        ev.process([good], [{k: v for k, v in _outputs(id_maps[0]).items() if k != output}])
    assert os.listdir(ev._work) == []


def test_evaluator_set_dispatches_on_metadata(gt, tmp_path):
    cfg = get_cfg()
    add_panoptic_config(cfg)
    name = "test_cityscapes_eval_dispatch"
    meta = dict(MetadataCatalog.get(NAME).as_dict())
    meta.pop("name")
    MetadataCatalog.get(name).set(**meta, evaluator_type="coco_panoptic_seg",
                                  panoptic_root=str(tmp_path), panoptic_json=str(tmp_path / "j"))
    kinds = [type(e).__name__ for e in build_panoptic_evaluators(cfg, name, str(tmp_path))]
    assert "CityscapesInstanceEvaluator" not in kinds
    MetadataCatalog.get(name).set(cityscapes_eval=True)
    kinds = [type(e).__name__ for e in build_panoptic_evaluators(cfg, name, str(tmp_path))]
    assert kinds[-2:] == ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]
