"""Models with random weights that still give many varied detections, for output comparisons."""

from __future__ import annotations

import torch
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from panoptic_ext import add_panoptic_config
from tests.helpers.tools import COCO_3X


def low_thresholds(cfg: CfgNode) -> CfgNode:
    """Random weights give low, spread scores: let many detections through every stage."""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.0
    cfg.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 64
    cfg.TEST.DETECTIONS_PER_IMAGE = 50
    return cfg


def tame_random_weights(model: nn.Module) -> nn.Module:
    """Random init with identity FrozenBN explodes activations (one saturated detection); shrink
    the BN scales and the RPN deltas so many varied detections flow through every stage."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.3 + 0.2)
        model.proposal_generator.rpn_head.anchor_deltas.weight.mul_(0.01)
    return model


def coco_cfg(exact: bool = False) -> CfgNode:
    """Our COCO 3x config on CPU, no weights file, low thresholds. `exact`: channels_last and
    folded norms off (they change low bits against Detectron2)."""
    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(COCO_3X)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if exact:
        cfg.MODEL.PANOPTIC_EXT.CHANNELS_LAST = False
        cfg.MODEL.PANOPTIC_EXT.FUSE_NORM = False
    return low_thresholds(cfg)


def detectron2_cfg() -> CfgNode:
    """Detectron2's own model-zoo Panoptic FPN R-50 3x config on CPU, low thresholds."""
    cfg = get_cfg()
    cfg.merge_from_file(
        model_zoo.get_config_file("COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return low_thresholds(cfg)


def random_inputs(seed: int = 1) -> list[dict]:
    """Two images: one with an output size larger than (and not a multiple of) its input size,
    one at its input size."""
    gen = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randint(0, 256, (3, 128, 192), generator=gen).float(),
         "height": 250, "width": 310},
        {"image": torch.randint(0, 256, (3, 96, 128), generator=gen).float()},
    ]


def tamed_model(cfg: CfgNode) -> nn.Module:
    """The model of `cfg` in eval mode, seeded, with `tame_random_weights`."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return tame_random_weights(build_model(cfg).eval())
