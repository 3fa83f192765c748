"""Inference speed-ups: folded norms, channels_last and reduced precision change only low bits,
follow weight changes, and leave nothing patched outside inference; ROIAlign over threads gives
the same bits; the mask head on the merge's instances alone gives their masks unchanged."""

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn

from panoptic_ext.modeling.inference_opts import (
    FoldedNorms,
    float_outputs,
    foldable,
    frozen_norm_training_patches,
    masks_above,
    parallel_roi_align,
    shadowed,
)

from ..helpers.model import coco_cfg, random_inputs, tamed_model


def _conv_bn(norm: nn.Module, bias: bool = False) -> Conv2d:
    gen = torch.Generator().manual_seed(0)
    conv = Conv2d(3, 8, 3, padding=1, bias=bias, norm=norm, activation=torch.relu)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        if bias:
            conv.bias.copy_(torch.randn(8, generator=gen))
        norm.weight.copy_(torch.rand(8, generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(8, generator=gen))
        norm.running_mean.copy_(torch.randn(8, generator=gen))
        norm.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
    return conv


@pytest.mark.parametrize("bias", [False, True])
def test_training_fold_of_frozen_norms_keeps_values_and_gradients(bias):
    conv = _conv_bn(FrozenBatchNorm2d(8), bias=bias)
    trained = _conv_bn(nn.BatchNorm2d(8), bias=bias).train()  # batch statistics: not folded
    root = nn.Sequential(conv, nn.Conv2d(8, 3, 1), trained)
    patches = frozen_norm_training_patches(root)
    assert [(obj, attr) for obj, attr, _ in patches] == [(conv, "forward")]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    outs = []
    for fold in (False, True):
        with shadowed(patches if fold else []):
            y = conv(x)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        grads = [x.grad.clone(), conv.weight.grad.clone()]
        grads += [conv.bias.grad.clone()] if bias else []
        outs.append((y.detach(), grads))
        x.grad = None
        conv.zero_grad()
    assert "forward" not in conv.__dict__
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    for got, want in zip(outs[1][1], outs[0][1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["frozen", "eval_bn", "eval_bn_bias"])
def test_folded_conv_equals_conv_then_norm(kind):
    norm = FrozenBatchNorm2d(8) if kind == "frozen" else nn.BatchNorm2d(8).eval()
    conv = _conv_bn(norm, bias=kind == "eval_bn_bias")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = conv(x)
        folder = FoldedNorms()
        patches = folder.patches(conv)
        assert [(obj, attr) for obj, attr, _ in patches] == [(conv, "forward")]
        with shadowed(patches):
            got = conv(x)
        assert "forward" not in conv.__dict__  # the module is itself again
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
        # cached while nothing changes, rebuilt after an in-place update
        folded = folder._cache[conv]
        folder.patches(conv)
        assert folder._cache[conv] is folded
        norm.weight.mul_(2.0)
        with shadowed(folder.patches(conv)):
            changed = conv(x)
        assert folder._cache[conv] is not folded
        assert torch.allclose(changed, conv(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(changed, want)


def test_only_inference_norms_fold():
    assert foldable(FrozenBatchNorm2d(4)) and foldable(nn.BatchNorm2d(4).eval())
    assert not foldable(nn.BatchNorm2d(4).train())
    assert not foldable(nn.BatchNorm2d(4, track_running_stats=False).eval())
    assert not foldable(nn.GroupNorm(2, 4)) and not foldable(None)
    conv = Conv2d(3, 4, 3, norm=nn.BatchNorm2d(4).train())
    assert FoldedNorms().patches(conv) == []


def test_float_outputs():
    lin = nn.Linear(4, 4)
    out = float_outputs(lambda x: {"y": [lin(x)], "n": 3}, "cpu", "bf16")(torch.randn(2, 4))
    assert out["y"][0].dtype == torch.float32 and out["n"] == 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(torch.randn(2, 4)).dtype == torch.bfloat16  # what float_outputs undoes


@pytest.fixture(scope="module")
def model():
    cfg = coco_cfg()  # channels_last and folded norms on, as configured by default
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.02  # still 50 detections, less NMS work
    return tamed_model(cfg), cfg


def test_bf16_precision_gives_valid_output(model):
    m, cfg = model
    cfg = cfg.clone()
    cfg.TEST.PRECISION = "bf16"
    cfg.MODEL.PANOPTIC_EXT.EMULATED_BF16 = True  # the bf16 path also where it is emulated
    bf = build_model(cfg).eval()
    assert bf.precision == "bf16"
    bf.load_state_dict(m.state_dict())
    with torch.no_grad():
        out = bf(random_inputs())
    for r, size in zip(out, ((250, 310), (96, 128)), strict=True):
        pan, segs = r["panoptic_seg"]
        assert pan.shape == size and pan.dtype == torch.int32
        assert r["sem_seg"].dtype == torch.float32 and r["sem_seg"].shape[1:] == size
        assert r["instances"].pred_boxes.tensor.dtype == torch.float32
        assert len(segs) > 0
        assert set(torch.unique(pan).tolist()) - {0} <= {s["id"] for s in segs}
    # autocast is confined to inference: no forward left patched on the submodules
    assert "forward" not in bf.backbone.__dict__
    assert "forward" not in bf.proposal_generator.rpn_head.__dict__
    cfg.TEST.PRECISION = "fp64"
    with pytest.raises(ValueError, match="TEST.PRECISION"):
        build_model(cfg)


def test_fast_modes_close_to_exact_and_follow_weight_changes(model):
    """channels_last + folded norms change only low bits; folded weights follow in-place
    weight updates (as load_state_dict makes)."""
    m, cfg = model
    assert m.channels_last and m.fuse_norm
    cfg = cfg.clone()
    cfg.MODEL.PANOPTIC_EXT.CHANNELS_LAST = False
    cfg.MODEL.PANOPTIC_EXT.FUSE_NORM = False
    exact = build_model(cfg).eval()
    exact.load_state_dict(m.state_dict())
    inputs = random_inputs()[1:]
    for step in range(2):
        with torch.no_grad():
            a = m.inference(inputs, outputs=("panoptic_seg", "sem_seg"))[0]
            b = exact(inputs)[0]
        sem_a, sem_b = a["sem_seg"], b["sem_seg"]
        assert (sem_a - sem_b).abs().max() <= 1e-3 * sem_b.abs().max()
        agree = (sem_a.argmax(0) == sem_b.argmax(0)).float().mean()
        assert agree > 0.99
        if step == 0:
            with torch.no_grad():
                for net in (m, exact):
                    net.backbone.bottom_up.stem.conv1.norm.weight.mul_(0.5)
    with torch.no_grad():
        for net in (m, exact):
            net.backbone.bottom_up.stem.conv1.norm.weight.mul_(2.0)
    assert "forward" not in m.backbone.bottom_up.stem.conv1.__dict__


@pytest.mark.parametrize("threads", [2, 3])
def test_parallel_roi_align_is_bit_identical(threads):
    from detectron2.modeling.poolers import ROIPooler

    pooler = ROIPooler((7, 7), (1 / 4, 1 / 8), 0, "ROIAlignV2")
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 8, 40, 48, generator=gen), torch.randn(2, 8, 20, 24, generator=gen)]
    align = pooler.level_poolers[0]
    for n in (5, 50):  # 5: too few to split; 50: dealt out to the threads
        xy = torch.rand(n, 2, generator=gen) * 150
        rois = torch.cat([torch.randint(0, 2, (n, 1), generator=gen).float(), xy,
                          xy + 2 + torch.rand(n, 2, generator=gen) * 60], dim=1)
        want = align(feats[0], rois)
        patches = parallel_roi_align([pooler, None], threads)
        assert len(patches) == 2
        with shadowed(patches):
            got = align(feats[0], rois)
            feat = feats[0].clone().requires_grad_()
            with_grad = align(feat, rois)  # the caller's grad mode reaches the threads
        assert torch.equal(got, want)
        assert with_grad.requires_grad and torch.equal(with_grad.detach(), want)
        assert "forward" not in align.__dict__
    assert parallel_roi_align([pooler], 1) == []


def test_parallel_roi_align_is_traced_whole():
    """A trace (TorchScript, ONNX export) records only its own thread: under the patch, tracing
    pools in the caller, so the traced graph still pools other inputs."""
    from detectron2.modeling.poolers import ROIPooler

    pooler = ROIPooler((7, 7), (1 / 4,), 0, "ROIAlignV2")
    align = pooler.level_poolers[0]
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=gen) * 100
    rois = torch.cat([torch.zeros(40, 1), xy, xy + 4 + torch.rand(40, 2, generator=gen) * 40], 1)
    with shadowed(parallel_roi_align([pooler], 2)), torch.no_grad():
        traced = torch.jit.trace(lambda f: align(f, rois), torch.randn(1, 8, 40, 48))
    other = torch.randn(1, 8, 40, 48, generator=gen)
    assert torch.equal(traced(other), align(other, rois))


@pytest.mark.parametrize("images,channels_last", [(2, False), (3, True), (5, False)])
def test_parallel_roi_align_backward_is_bit_identical(images, channels_last):
    """In training, whole images go to the threads, so each image's gradient accumulates its own
    boxes in their order: values and gradients equal the one-thread kernel's bits."""
    from detectron2.modeling.poolers import ROIPooler

    pooler = ROIPooler((7, 7), (1 / 4,), 0, "ROIAlignV2")
    align = pooler.level_poolers[0]
    gen = torch.Generator().manual_seed(images)
    feats = torch.randn(images, 8, 40, 48, generator=gen)
    if channels_last:
        feats = feats.contiguous(memory_format=torch.channels_last)
    n = 24 * images
    xy = torch.rand(n, 2, generator=gen) * 150
    rois = torch.cat([torch.randint(0, images, (n, 1), generator=gen).float(), xy,
                      xy + 2 + torch.rand(n, 2, generator=gen) * 60], dim=1)
    grad = torch.randn(n, 8, 7, 7, generator=gen)
    want_in = feats.clone().requires_grad_()
    want = align(want_in, rois)
    want.backward(grad)
    got_in = feats.clone().requires_grad_()
    with shadowed(parallel_roi_align([pooler], 2)):
        got = align(got_in, rois)
    assert type(got.grad_fn).__name__ == "_ROIAlignByImageBackward"  # the threaded path ran
    got.backward(grad)
    assert torch.equal(got, want)
    assert torch.equal(got_in.grad, want_in.grad)


def test_masks_above_computes_only_the_merges_masks(model):
    m, _ = model
    inputs = random_inputs()
    rh = m.roi_heads
    seen: list[int] = []

    def layers(x):
        seen.append(x.shape[0])
        return type(rh.mask_head).layers(rh.mask_head, x)

    with torch.no_grad(), shadowed([(rh.mask_head, "layers", layers)]):
        full, _ = m.inference(inputs, do_postprocess=False)
        scores = torch.cat([d.scores for d in full])
        thresh = float(scores.median())
        with shadowed(masks_above(rh, thresh)):
            some, _ = m.inference(inputs, do_postprocess=False)
    assert "_forward_mask" not in rh.__dict__  # nothing left patched
    kept = int((scores >= thresh).sum())
    assert 0 < kept < len(scores)
    assert seen == [len(scores), kept]  # the mask head ran on the kept ROIs alone
    for f, s in zip(full, some, strict=True):
        keep = f.scores >= thresh
        assert torch.equal(f.pred_boxes.tensor, s.pred_boxes.tensor)
        assert torch.equal(f.pred_masks[keep], s.pred_masks[keep])  # bit for bit
        assert not s.pred_masks[~keep].any()
