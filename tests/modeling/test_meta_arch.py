"""PanopticFPNExt on CPU: constructor defaults, loss weighting, a few training steps that learn,
and the inference dispatch: output format, the panoptic-only path, and `inference_for_combine` +
`merge` (what tuning runs) giving inference's panoptic result."""

import inspect
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from panoptic_ext import PanopticFPNExt, add_panoptic_config
from tests.helpers.tools import CONFIGS

from ..helpers.model import coco_cfg, random_inputs, tamed_model

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


@pytest.mark.parametrize("fast,norm", [(False, "BN"), (True, "BN"), (False, "FrozenBN"),
                                       (True, "FrozenBN")])
def test_training_step_equals_detectron2s(fast, norm):
    """One training step against Detectron2's PanopticFPN on the same weights, batch and
    sampling: the same losses and gradients, bit for bit with CHANNELS_LAST and FUSE_NORM off;
    within float tolerance with them on (channels_last convolutions, frozen norms folded into
    the backbone's convolutions; ROIAlign over threads is exact)."""
    cfg = _cfg("MODEL.PANOPTIC_EXT.CHANNELS_LAST", str(fast), "MODEL.PANOPTIC_EXT.FUSE_NORM",
               str(fast), "MODEL.RESNETS.NORM", norm, "MODEL.RESNETS.DEPTH", "18",
               "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
               "32")
    d2_cfg = cfg.clone()
    d2_cfg.MODEL.META_ARCHITECTURE = "PanopticFPN"
    d2_cfg.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
    torch.manual_seed(0)
    d2 = build_model(d2_cfg).train()
    gen = torch.Generator().manual_seed(1)
    frozen = [m for m in d2.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == (20 if norm == "FrozenBN" else 0)
    for m in frozen:  # statistics that make the fold do something
        c = m.weight.shape[0]
        m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    ours = build_model(cfg).train()
    ours.load_state_dict(d2.state_dict())
    batch = _batch(4)
    grads = []
    for model in (d2, ours):
        losses = _losses(model, batch)
        sum(losses.values()).backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
        if model is d2:
            want = losses
    assert set(losses) == set(want)
    assert set(grads[0]) == set(grads[1])
    for k in want:
        if fast:
            torch.testing.assert_close(losses[k], want[k], rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(losses[k], want[k]), k
    for k, g in grads[0].items():
        if fast:  # Detectron2's own model moves its stem gradient by 2.2e-3 (norm) here
            # when run channels_last: batch norms' backward cancels the rounding differences
            assert (grads[1][k] - g).norm() <= 1e-2 * g.norm() + 1e-9, k
        else:
            assert torch.equal(grads[1][k], g), k


def test_constructor_defaults_are_the_config_defaults():
    """A model built without a config behaves as one built from the default config."""
    ext = add_panoptic_config(get_cfg()).MODEL.PANOPTIC_EXT
    params = inspect.signature(PanopticFPNExt.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults["fast_inference"] == ext.FAST_INFERENCE is True
    assert defaults["channels_last"] == ext.CHANNELS_LAST is True
    assert defaults["fuse_norm"] == ext.FUSE_NORM is True
    assert defaults["postprocess_threads"] == ext.POSTPROCESS_THREADS == 1
    assert list(defaults["outputs"]) == list(ext.INFERENCE_OUTPUTS)
    assert defaults["precision"] == add_panoptic_config(get_cfg()).TEST.PRECISION.lower()


@pytest.fixture(scope="module")
def coco_model():
    cfg = coco_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.02  # still 50 detections, less NMS work
    return tamed_model(cfg)


def test_panoptic_only_equals_full_path(coco_model):
    m = coco_model
    inputs = random_inputs()
    old = m.combine.score_thresh
    with torch.no_grad():
        full = m(inputs)
        try:
            # half the detections below the merge threshold: they are never pasted
            scores = torch.cat([r["instances"].scores for r in full])
            m.combine.score_thresh = float(scores.median())
            only = m.inference(inputs, outputs=("panoptic_seg",))
            ref = [m.combine(r["instances"], r["sem_seg"].argmax(dim=0)) for r in full]
        finally:
            m.combine.score_thresh = old
    things = 0
    for r, o in zip(ref, only, strict=True):
        assert set(o) == {"panoptic_seg"}
        assert torch.equal(r[0], o["panoptic_seg"][0])
        assert r[1] == o["panoptic_seg"][1]
        things += sum(s["isthing"] for s in r[1])
    assert things > 5
    assert only[0]["panoptic_seg"][0].shape == (250, 310)
    with torch.no_grad():
        sem_only = m.inference(inputs, outputs=("sem_seg",))
    assert [set(o) for o in sem_only] == [{"sem_seg"}] * 2
    assert all(torch.equal(o["sem_seg"], r["sem_seg"]) for o, r in zip(sem_only, full,
                                                                       strict=True))
    with pytest.raises(ValueError, match="outputs"):
        m.inference(inputs, outputs=("nope",))


def test_inference_for_combine_then_run_combine_is_inference(coco_model):
    """`inference_for_combine` + `run_combine` with another strategy object (other score threshold,
    masks pasted down to it) is inference with that strategy: one post-processing path."""
    m = coco_model
    inputs = random_inputs()
    base = m.combine
    with torch.no_grad():
        combine_inputs = m.inference_for_combine(inputs, mask_score_thresh=0.0)  # every mask
        scores = torch.cat([x.instances.scores for x in combine_inputs])
        high, low = float(scores.quantile(0.75)), float(scores.median())
        try:
            m.combine = base.with_thresholds(score_thresh=high)
            default_inputs = m.inference_for_combine(inputs)  # masks down to the merge's threshold
            for thresh in (high, low):
                m.combine = base.with_thresholds(score_thresh=thresh)
                want = m.inference(inputs, outputs=("panoptic_seg",))
                for x, w in zip(combine_inputs, want, strict=True):
                    got = m.run_combine(x, m.combine)
                    assert torch.equal(got[0], w["panoptic_seg"][0])
                    assert got[1] == w["panoptic_seg"][1]
        finally:
            m.combine = base
    for x, d, inp in zip(combine_inputs, default_inputs, inputs, strict=True):
        size = (inp.get("height", inp["image"].shape[1]), inp.get("width", inp["image"].shape[2]))
        assert x.sem_labels.shape == size and x.instances.image_size == size
        crops, default_crops = x.instances.pred_mask_crops, d.instances.pred_mask_crops
        assert all(c is not None for c in crops)  # CPU: every mask pasted, as a crop
        assert [c is not None for c in default_crops] == (d.instances.scores >= high).tolist()
        assert 0 < sum(c is not None for c in default_crops) < len(default_crops)


def test_training_layout_follows_the_cpu(monkeypatch, caplog):
    """CHANNELS_LAST trains channels_last where oneDNN has AVX-512 and NCHW elsewhere (said
    once), converting back after an evaluation made the weights channels_last."""
    import logging

    from panoptic_ext.modeling import precision

    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"))
    stem = model.backbone.bottom_up.stem.conv1.weight
    batch = _batch(2)
    monkeypatch.setattr(precision, "_logged", set())
    monkeypatch.setattr(precision, "avx512_convolutions", lambda: False)
    with caplog.at_level(logging.INFO, logger="panoptic_ext"):
        for _ in range(2):
            _losses(model.train(), batch)
            assert stem.is_contiguous() and not model.training_channels_last()
            with torch.no_grad():
                model.eval()(random_inputs())  # inference stays channels_last
            assert stem.is_contiguous(memory_format=torch.channels_last)
            assert not stem.is_contiguous()
    said = [r for r in caplog.records if "training runs NCHW" in r.getMessage()]
    assert len(said) == 1
    monkeypatch.setattr(precision, "avx512_convolutions", lambda: True)
    _losses(model.train(), batch)
    assert model.training_channels_last() and not stem.is_contiguous()
