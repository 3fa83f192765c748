"""PanopticFPNExt on CPU: loss weighting, output format, and a few training steps that learn."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from panoptic_ext import add_panoptic_config

from .conftest import CONFIGS

SIZE = 64


def _cfg(*opts):
    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(os.path.join(CONFIGS, "Synthetic", "panoptic_fpn_R_50.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def _batch(n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.rand(3, SIZE, SIZE, generator=gen) * 60 + 60
        sem = torch.full((SIZE, SIZE), 1, dtype=torch.long)
        sem[SIZE // 2:] = 2
        boxes, masks = [], []
        for i, (x0, y0, s) in enumerate([(6, 8, 20), (34, 30, 24)]):
            m = torch.zeros(SIZE, SIZE, dtype=torch.bool)
            m[y0:y0 + s, x0:x0 + s] = True
            image[i % 3, y0:y0 + s, x0:x0 + s] = 250
            sem[m] = 0
            boxes.append([x0, y0, x0 + s, y0 + s])
            masks.append(m)
        sem[:2] = 255  # ignored rows
        inst = Instances((SIZE, SIZE))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor([0, 1])
        inst.gt_masks = BitMasks(torch.stack(masks))
        out.append({"image": image, "instances": inst, "sem_seg": sem,
                    "height": SIZE, "width": SIZE})
    return out


def _losses(model, batch):
    torch.manual_seed(0)
    with EventStorage(0):
        return model(batch)


def test_loss_weights_scale_each_term():
    torch.manual_seed(0)
    base = build_model(_cfg())
    weighted = build_model(_cfg("MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.loss_sem_seg", "3.0",
                                "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT", "0.5"))
    weighted.load_state_dict(base.state_dict())
    batch = _batch()
    a, b = _losses(base, batch), _losses(weighted, batch)
    assert set(a) == {"loss_sem_seg", "loss_rpn_cls", "loss_rpn_loc", "loss_cls",
                      "loss_box_reg", "loss_mask"}
    assert torch.allclose(b["loss_sem_seg"], a["loss_sem_seg"] * 3.0)
    for k in ("loss_cls", "loss_box_reg", "loss_mask"):
        assert torch.allclose(b[k], a[k] * 0.5), k
    for k in ("loss_rpn_cls", "loss_rpn_loc"):
        assert torch.allclose(b[k], a[k]), k


def test_inference_outputs_resized_to_requested_size():
    model = build_model(_cfg()).eval()
    batch = _batch(1)
    batch[0]["height"], batch[0]["width"] = 96, 80
    with torch.no_grad():
        (out,) = model(batch)
    assert set(out) == {"instances", "sem_seg", "panoptic_seg"}
    assert out["sem_seg"].shape == (4, 96, 80)
    panoptic, segments = out["panoptic_seg"]
    assert panoptic.shape == (96, 80) and panoptic.dtype == torch.int32
    assert out["instances"].image_size == (96, 80)
    assert {s["id"] for s in segments} == set(panoptic.unique().tolist()) - {0}


def test_training_without_semantic_targets_is_a_clear_error():
    model = build_model(_cfg())
    batch = _batch(1)
    del batch[0]["sem_seg"]
    with pytest.raises(ValueError, match="sem_seg"):
        _losses(model, batch)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_model(_cfg())
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batch = _batch()
    totals = []
    with EventStorage(0) as storage:
        for step in range(6):
            storage.iter = step
            losses = model(batch)
            total = sum(losses.values())
            assert torch.isfinite(total)
            opt.zero_grad()
            total.backward()
            opt.step()
            totals.append(total.item())
    assert totals[-1] < totals[0] * 0.8, totals
