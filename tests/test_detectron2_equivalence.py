"""Checkpoint compatibility and identical outputs with Detectron2's own PanopticFPN."""

import pickle

import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model


def _d2_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def _low_thresholds(cfg):
    # Random weights give low, spread scores: let many detections through every stage.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 64
    cfg.TEST.DETECTIONS_PER_IMAGE = 50
    return cfg


def _tame_random_weights(model):
    """Random init with identity FrozenBN explodes activations (one saturated detection); shrink
    the BN scales and the RPN deltas so many varied detections flow through every stage."""
    from detectron2.layers import FrozenBatchNorm2d

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.3 + 0.2)
        model.proposal_generator.rpn_head.anchor_deltas.weight.mul_(0.01)


@pytest.fixture(scope="module")
def models():
    from panoptic_ext import add_panoptic_config

    from .conftest import CONFIGS

    torch.manual_seed(0)
    d2 = build_model(_low_thresholds(_d2_cfg())).eval()
    _tame_random_weights(d2)
    cfg = get_cfg()
    add_panoptic_config(cfg)
    cfg.merge_from_file(f"{CONFIGS}/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    # exact mode: channels_last and folded norms differ from Detectron2's in the low bits
    cfg.MODEL.PANOPTIC_EXT.CHANNELS_LAST = False
    cfg.MODEL.PANOPTIC_EXT.FUSE_NORM = False
    ours = build_model(_low_thresholds(cfg)).eval()
    return d2, ours, cfg


def test_state_dict_keys_identical(models):
    d2, ours, _ = models
    assert type(ours).__name__ == "PanopticFPNExt"
    result = ours.load_state_dict(d2.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(ours.state_dict()) == set(d2.state_dict())


def test_model_zoo_pkl_loads_without_missing_keys(models, tmp_path):
    """A checkpoint in the model zoo's .pkl layout (numpy arrays + __author__) loads fully."""
    d2, ours, _ = models
    path = tmp_path / "model_final_fake.pkl"
    blob = {k: v.numpy() for k, v in d2.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": blob, "__author__": "Detectron2 Model Zoo"}, f)
    fresh = build_model(models[2])
    ckpt = DetectionCheckpointer(fresh)
    incompatible = ckpt._load_model(ckpt._load_file(str(path)))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    for k, v in d2.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_same_outputs_as_detectron2(models):
    d2, ours, _ = models
    ours.load_state_dict(d2.state_dict())
    gen = torch.Generator().manual_seed(1)
    inputs = [
        {"image": torch.randint(0, 256, (3, 160, 224), generator=gen).float(),
         "height": 320, "width": 448},
        {"image": torch.randint(0, 256, (3, 192, 128), generator=gen).float()},
    ]
    with torch.no_grad():
        ref = d2(inputs)
        got = ours(inputs)
    total_instances = 0
    for r, g in zip(ref, got, strict=False):
        assert torch.equal(r["sem_seg"], g["sem_seg"])
        ri, gi = r["instances"], g["instances"]
        total_instances += len(ri)
        assert len(ri) == len(gi)
        for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
            a, b = ri.get(field), gi.get(field)
            a = a.tensor if hasattr(a, "tensor") else a
            b = b.tensor if hasattr(b, "tensor") else b
            assert torch.equal(a, b), field
        assert torch.equal(r["panoptic_seg"][0], g["panoptic_seg"][0])
        assert r["panoptic_seg"][1] == g["panoptic_seg"][1]
    assert got[0]["panoptic_seg"][0].shape == (320, 448)
    assert total_instances > 10  # the comparison covered real detections
    assert any(s["isthing"] for r in got for s in r["panoptic_seg"][1])
