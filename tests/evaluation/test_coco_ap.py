"""FastCOCOEvaluator (hotcoco's COCOeval) against Detectron2's COCOEvaluator on pycocotools."""

import contextlib
import copy
import io

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances

from panoptic_ext.evaluation import FastCOCOEvaluator
from panoptic_ext.evaluation.coco_ap import check_ap_backend

pytest.importorskip("hotcoco")

NAME = "synthetic_panoptic_val_separated"


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    from panoptic_ext.data import generate_synthetic_dataset, register_synthetic

    root = tmp_path_factory.mktemp("ap_data")
    generate_synthetic_dataset(root, seed=11, num_train=1, num_val=6, size=64, progress=False)
    register_synthetic(root)
    yield root
    register_synthetic()


def _detections(seed):
    """Model-like outputs: every GT instance twice, boxes jittered, masks shifted, some
    relabelled, plus spurious ones, random scores (ties included)."""
    rng = np.random.default_rng(seed)
    inputs, outputs = [], []
    for d in DatasetCatalog.get(NAME):
        h, w = d["height"], d["width"]
        boxes, masks, classes, scores = [], [], [], []
        for ann in d["annotations"]:
            x0, y0, x1, y1 = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
            seg = ann["segmentation"]
            m = mask_util.decode(mask_util.frPyObjects(seg, h, w) if isinstance(seg, list)
                                 or isinstance(seg.get("counts"), list) else seg)
            m = m.max(axis=2) if m.ndim == 3 else m
            for k in range(2):
                jitter = rng.normal(0, 1.5, 4)
                boxes.append([x0 + jitter[0], y0 + jitter[1], x1 + jitter[2], y1 + jitter[3]])
                masks.append(np.roll(m, int(rng.integers(-3, 4)) * k, axis=1))
                cls = ann["category_id"] if rng.random() < 0.85 else int(rng.integers(0, 3))
                classes.append(cls)
                scores.append(round(float(rng.random()), 1))
        for _ in range(2):  # spurious
            cx, cy = rng.uniform(8, w - 8), rng.uniform(8, h - 8)
            boxes.append([cx - 6, cy - 6, cx + 6, cy + 6])
            m = np.zeros((h, w), np.uint8)
            m[int(cy) - 5:int(cy) + 5, int(cx) - 5:int(cx) + 5] = 1
            masks.append(m)
            classes.append(int(rng.integers(0, 3)))
            scores.append(float(rng.random()))
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inst.pred_masks = BitMasks(torch.from_numpy(np.stack(masks).astype(bool))).tensor
        inputs.append({"image_id": d["image_id"], "height": h, "width": w})
        outputs.append({"instances": inst})
    return inputs, outputs


def _run(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, copy.deepcopy(outputs))
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()


@pytest.mark.parametrize("seed", [0, 1])
def test_ap_equals_pycocotools(val_root, tmp_path, seed):
    inputs, outputs = _detections(seed)
    kw = dict(tasks=("bbox", "segm"), distributed=False)
    ref = _run(COCOEvaluator(NAME, **kw, output_dir=str(tmp_path / "ref")), inputs, outputs)
    fast_eval = FastCOCOEvaluator(NAME, **kw, output_dir=str(tmp_path / "fast"))
    assert fast_eval.uses_hotcoco
    fast = _run(fast_eval, inputs, outputs)
    assert list(fast) == list(ref) == ["bbox", "segm"]
    for task in ("bbox", "segm"):
        assert list(fast[task]) == list(ref[task])
        assert 5 < ref[task]["AP"] < 100  # a real, non-trivial AP
        for key, value in ref[task].items():  # AP, AP50, AP75, APs/m/l, AP-<class>
            assert fast[task][key] == pytest.approx(value, abs=1e-6, nan_ok=True), (task, key)
    assert (tmp_path / "fast" / "coco_instances_results.json").read_text() == (
        tmp_path / "ref" / "coco_instances_results.json").read_text()


def test_pycocotools_backend_and_names(val_root):
    inputs, outputs = _detections(2)
    slow = FastCOCOEvaluator(NAME, tasks=("bbox",), distributed=False, backend="pycocotools")
    assert not slow.uses_hotcoco
    ref = _run(COCOEvaluator(NAME, tasks=("bbox",), distributed=False), inputs, outputs)
    assert _run(slow, inputs, outputs)["bbox"]["AP"] == ref["bbox"]["AP"]
    with pytest.raises(ValueError, match="TEST.AP_BACKEND='fast'"):
        check_ap_backend("fast")


def test_batched_rles_equal_detectron2s(val_root):
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    from panoptic_ext.evaluation.coco_ap import instances_to_results

    _, outputs = _detections(3)
    for out in outputs:
        inst = out["instances"]
        assert instances_to_results(inst, 7) == instances_to_coco_json(inst, 7)


def test_fast_sem_seg_equals_detectron2s(val_root):
    from detectron2.evaluation import SemSegEvaluator

    from panoptic_ext.evaluation import FastSemSegEvaluator
    from panoptic_ext.modeling.postprocess import class_argmax

    torch.manual_seed(0)
    inputs, outputs = [], []
    for d in DatasetCatalog.get(NAME):
        h, w = d["height"], d["width"]
        scores = torch.randint(0, 3, (4, h, w)).float()  # many ties: first maximum wins
        assert torch.equal(class_argmax(scores), scores.argmax(dim=0))
        inputs.append({"file_name": d["file_name"], "height": h, "width": w})
        outputs.append({"sem_seg": scores})
    ref = _run(SemSegEvaluator(NAME, distributed=False), inputs, outputs)["sem_seg"]
    got = _run(FastSemSegEvaluator(NAME, distributed=False), inputs, outputs)["sem_seg"]
    assert list(got) == list(ref) and 0 < ref["mIoU"] < 100
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
