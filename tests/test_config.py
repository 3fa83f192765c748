import glob
import os

import pytest
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from panoptic_ext import add_panoptic_config
from tests.helpers.tools import COCO_3X, CONFIGS

OURS_ONLY = {"MODEL.META_ARCHITECTURE", "MODEL.SEM_SEG_HEAD.NAME"}


def _flatten(node, prefix=""):
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, CfgNode):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))
)
def test_every_config_merges(path):
    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(path)
    assert cfg.MODEL.META_ARCHITECTURE in ("PanopticFPNExt", "GeneralizedRCNN")


def test_3x_matches_detectron2_model_zoo():
    ours = add_panoptic_config(get_cfg())
    ours.merge_from_file(COCO_3X)
    ref = get_cfg()
    ref.merge_from_file(model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"))
    a, b = _flatten(ours), _flatten(ref)
    shared = set(a) & set(b)
    assert len(shared) > 150
    diff = {k: (a[k], b[k]) for k in shared - OURS_ONLY if a[k] != b[k]}
    assert diff == {}
    assert a["MODEL.META_ARCHITECTURE"] == "PanopticFPNExt"
    assert a["MODEL.SEM_SEG_HEAD.NAME"] == "SemanticFPNHead"
    # The keys we add: our own node, and precision switches next to the ones they extend.
    extra = {"SOLVER.AMP.DTYPE", "SOLVER.LOG_PERIOD", "TEST.PRECISION",
             "DATALOADER.ON_BAD_SAMPLE", "DATALOADER.VALIDATE", "DATASETS.PANOPTIC_FOLDERS",
             "TEST.SAVE_PREDICTIONS"}
    extra |= {"TEST.RUNTIME"}
    extra |= {"TEST.PQ_BACKEND", "TEST.AP_BACKEND", "DATALOADER.ON_BAD_AREA"}
    extra |= {"SOLVER.EPOCHS", "SOLVER.STEPS_EPOCHS", "SOLVER.WARMUP_EPOCHS",
              "SOLVER.CHECKPOINT_PERIOD_EPOCHS", "SOLVER.EPOCHS_RESOLVED",
              "TEST.EVAL_PERIOD_EPOCHS"}
    assert all(k.startswith("MODEL.PANOPTIC_EXT.") or k in extra for k in set(a) - set(b))


def test_unknown_key_is_named():
    cfg = add_panoptic_config(get_cfg())
    with pytest.raises((KeyError, AssertionError), match="LOSS_WEIGHTS.loss_nope"):
        cfg.merge_from_list(["MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.loss_nope", "2.0"])
