"""IndexedBitMasks: Detectron2's BitMasks without a copy per proposal, the same mask targets bit
for bit through the indexing the ROI heads do; the training step wires it in."""

import pytest
import torch
from detectron2.structures import BitMasks, Instances, PolygonMasks

from panoptic_ext.modeling.mask_targets import IndexedBitMasks, with_indexed_masks


def _masks(n=5, h=60, w=90, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, h, w), generator=gen) > 0.6


def _boxes(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand((n, 2), generator=gen) * torch.tensor([60.0, 40.0])
    wh = torch.rand((n, 2), generator=gen) * 30 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_indexing_then_crop_equals_bitmasks_bit_for_bit():
    masks = _masks()
    gen = torch.Generator().manual_seed(2)
    sampled = torch.randint(0, 5, (40,), generator=gen)  # proposals -> matched ground truth
    fg = torch.rand(40, generator=gen) > 0.5
    plain, indexed = BitMasks(masks)[sampled][fg], IndexedBitMasks(masks)[sampled][fg]
    assert len(indexed) == len(plain) == int(fg.sum())
    assert torch.equal(indexed.tensor, plain.tensor)
    boxes = _boxes(len(plain))
    for size in (28, 14):
        assert torch.equal(indexed.crop_and_resize(boxes, size), plain.crop_and_resize(boxes, size))
    # int, negative int and slice indexing as BitMasks does them
    for item in (3, -1, slice(2, 7)):
        assert torch.equal(indexed[item].tensor, plain[item].tensor)
    assert torch.equal(BitMasks.cat([indexed, indexed[:2]]).tensor,
                       BitMasks.cat([plain, plain[:2]]).tensor)
    assert indexed[fg[: len(indexed)] & False].crop_and_resize(torch.zeros(0, 4), 28).shape == (
        0, 28, 28)


def test_bad_use_is_a_clear_error():
    indexed = IndexedBitMasks(_masks())
    with pytest.raises(ValueError, match="3 boxes for 5 masks"):
        indexed.crop_and_resize(_boxes(3), 28)
    with pytest.raises(ValueError, match="N x H x W"):
        IndexedBitMasks(torch.zeros(4, 4, dtype=torch.bool))


def test_with_indexed_masks_swaps_bitmasks_only():
    inst = Instances((60, 90), gt_masks=BitMasks(_masks()))
    copy = with_indexed_masks(inst.to("cpu"))
    assert type(copy.gt_masks) is IndexedBitMasks
    assert type(inst.gt_masks) is BitMasks  # the caller's instances are left as they were
    assert torch.equal(copy.gt_masks.tensor, inst.gt_masks.tensor)
    poly = Instances((60, 90), gt_masks=PolygonMasks([[[1.0, 1.0, 9.0, 1.0, 9.0, 9.0]]]))
    assert type(with_indexed_masks(poly).gt_masks) is PolygonMasks


def test_training_step_crops_targets_from_indexed_masks(monkeypatch):
    from detectron2.modeling import build_model

    from .test_meta_arch import _batch, _cfg, _losses

    calls = []
    crop = IndexedBitMasks.crop_and_resize

    def counted(self, boxes, mask_size):
        calls.append(len(boxes))
        return crop(self, boxes, mask_size)

    monkeypatch.setattr(IndexedBitMasks, "crop_and_resize", counted)
    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"))
    batch = _batch(2)
    losses = _losses(model.train(), batch)
    assert torch.isfinite(losses["loss_mask"])
    assert len(calls) == 2 and sum(calls) > 0  # one crop per image, of its foreground proposals
    assert all(type(d["instances"].gt_masks) is BitMasks for d in batch)
