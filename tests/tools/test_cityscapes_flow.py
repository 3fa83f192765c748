"""Cityscapes from its raw layout through the tools: prepare, train 2 iterations with and
without crops on the Cityscapes config, --eval-only with PQ per class and Cityscapes' own AP
and mIoU, demo on an image."""

import json
import os

import pytest

from tests.helpers.cityscapes import write_cityscapes_tree
from tests.helpers.tools import CONFIGS, FAST, REPO, run_tool

CONFIG = os.path.join(CONFIGS, "Cityscapes-PanopticSegmentation", "panoptic_fpn_R_50.yaml")
# From scratch on 64x128 images: trainable BN (frozen BN from random weights diverges), 32x64
# inputs, and crops of half of that.
SMALL = ["MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN",
         "MODEL.BACKBONE.FREEZE_AT", "0", *FAST, "INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice",
         "INPUT.CROP.SIZE", "(16, 32)", "SOLVER.MAX_ITER", "2", "SOLVER.REFERENCE_WORLD_SIZE",
         "0", "TEST.EVAL_PERIOD", "0"]
THINGS = {"person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes_root")
    write_cityscapes_tree(root)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="2")
    run_tool(["datasets/prepare_cityscapes_panoptic.py", "--root", str(root), "--workers", "1"],
             env)
    return root, env


@pytest.mark.parametrize("crop", ["True", "False"])
def test_prepare_train_evaluate_demo(tree, tmp_path, crop):
    root, env = tree
    out = tmp_path / "run"
    run_tool(["tools/train_net.py", "--config-file", CONFIG, *SMALL, "INPUT.CROP.ENABLED", crop,
              "OUTPUT_DIR", str(out)], env)
    assert (out / "model_final.pth").is_file()
    if crop == "False":
        return  # the rest does not depend on how the model was trained
    run_tool(["tools/train_net.py", "--config-file", str(out / "config.yaml"), "--eval-only",
              "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "e")],
             env)
    inference = tmp_path / "e/inference/cityscapes_fine_panoptic_val_separated"
    metrics = json.loads((inference / "metrics.json").read_text())
    per_class = {k.split("/", 1)[1] for k in metrics["panoptic_seg"] if k.startswith("PQ/")}
    assert THINGS <= per_class and {"road", "sky"} <= per_class
    # Cityscapes' own metrics (cityscapesScripts), next to PQ and the COCO ones.
    ap, iou = metrics["cityscapes_instance_seg"], metrics["cityscapes_sem_seg"]
    assert 0 <= ap["AP"] <= 100 and 0 <= ap["AP50"] <= 100
    assert 0 <= iou["mIoU"] <= 100 and {"IoU/road", "IoU/sky"} <= set(iou)
    assert not list(inference.glob("cityscapes_*_eval"))  # prediction files removed
    assert not os.path.exists(os.path.join(REPO, "matches.json"))  # nothing in the tool's cwd
    image = next((root / "cityscapes/leftImg8bit/val").rglob("*_leftImg8bit.png"))
    run_tool(["tools/demo.py", "--config-file", str(out / "config.yaml"), "--input", str(image),
              "--output", str(tmp_path / "d"), "--opts", "MODEL.WEIGHTS",
              str(out / "model_final.pth")], env)
    preds = json.loads((tmp_path / "d" / "predictions.json").read_text())
    assert {c["name"] for c in preds["categories"]} >= THINGS | {"road", "sky"}
    assert (tmp_path / "d" / image.name).is_file()
