"""benchmarks/train_speed.py (tools/benchmark_train.py): both trainers on the same weights and
batches, stage timings, multiply-adds, the report. No wall-clock limits."""

import pytest
import torch
from detectron2.structures import BitMasks, Boxes, Instances
from torch import nn

from benchmarks.train_speed import (
    TRAIN_STAGES,
    count_step_macs,
    format_train_report,
    resize_batch,
    run_train_benchmark,
)
from panoptic_ext.data import generate_synthetic_dataset, register_synthetic
from panoptic_ext.engine.defaults import setup_cfg
from tests.helpers.tools import CONFIG, FAST


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_dataset(root, seed=4, num_train=6, num_val=2, size=64, progress=False)
    register_synthetic(root)
    yield root
    register_synthetic()


def test_same_first_losses_as_detectron2_and_a_full_report(synthetic):
    cfg = setup_cfg(CONFIG, [*FAST, "MODEL.PANOPTIC_EXT.CHANNELS_LAST", "False",
                             "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    report = run_train_benchmark(cfg, steps=1, warmup=0, progress=False)
    assert report["first_loss_max_rel_diff"] == 0.0  # exact mode: the same step, bit for bit
    assert set(report["first_losses"]["ours"]) >= {"loss_sem_seg", "loss_cls", "loss_mask"}
    for side in ("d2", "ours"):
        assert set(report[side]["stages"]) == set(TRAIN_STAGES)
        assert report[side]["stages"]["backward"] > 0 and report[side]["total"]["median"] > 0
    lim = report["limit"]
    fwd = sum(lim["forward_macs"].values())
    assert lim["forward_macs"]["backbone+FPN"] > 0 and lim["forward_macs"]["ROI heads"] > 0
    assert 1.5 * fwd < lim["backward_macs"] < 2 * fwd  # no input gradient for the stem
    text = format_train_report(report)
    assert text.splitlines()[-1] == f"train ratio {report['ratio']:.3f}"
    assert "x of the limit" in text and "first-step losses" in text


def test_multiply_adds_of_conv_deconv_and_linear():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 2, 2, stride=2))
    head = nn.Linear(8, 5)
    model = nn.Module()
    model.backbone, model.roi_heads = net, head
    counts: dict = {}
    with count_step_macs(model, counts):
        net(torch.randn(2, 3, 6, 6))
        head(torch.randn(7, 8, requires_grad=True))
    conv, deconv, linear = 2 * 4 * 36 * 27, 2 * 4 * 36 * 2 * 4, 7 * 5 * 8
    assert counts["backbone+FPN"] == {"forward": conv + deconv,
                                      "backward": conv + 2 * deconv}  # image: no input grad
    assert counts["ROI heads"] == {"forward": linear, "backward": 2 * linear}


def test_resize_batch_scales_image_masks_boxes():
    inst = Instances((8, 10))
    inst.gt_boxes = Boxes(torch.tensor([[1.0, 2.0, 5.0, 6.0]]))
    inst.gt_classes = torch.tensor([1])
    mask = torch.zeros(1, 8, 10, dtype=torch.bool)
    mask[0, 2:6, 1:5] = True
    inst.gt_masks = BitMasks(mask)
    batch = [{"image": torch.full((3, 8, 10), 7, dtype=torch.uint8), "instances": inst,
              "sem_seg": torch.ones(8, 10, dtype=torch.long), "height": 8, "width": 10}]
    (out,) = resize_batch(batch, (16, 30))
    assert out["image"].shape == (3, 16, 30) and out["image"].dtype == torch.uint8
    assert out["sem_seg"].shape == (16, 30) and out["instances"].image_size == (16, 30)
    assert out["instances"].gt_boxes.tensor.tolist() == [[3.0, 4.0, 15.0, 12.0]]
    assert out["instances"].gt_masks.tensor.sum() == 4 * 4 * 2 * 3
