"""Post-processing gives Detectron2's results with less work: the semantic argmax from 1/4-scale
logits, boxes and mask crops for the merge, and the tensor-only (scriptable) form the export
runs, which equals the eager model's panoptic output."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import Boxes, Instances

from panoptic_ext.modeling.postprocess import (
    _source_index,
    class_argmax,
    panoptic_from_detections,
    paste_for_combine,
    paste_mask_crop,
    rescale_boxes,
    segments_from_tensors,
    semantic_argmax,
    semantic_logits,
    semantic_resize,
)

from ..helpers.model import coco_cfg, random_inputs, tamed_model


def _detectron2_labels(logits, image_size, out_size):
    up = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    return sem_seg_postprocess(up, image_size, out_size[0], out_size[1]).argmax(dim=0)


def test_source_weights_are_the_kernels_own():
    """The fast path evaluates candidates with the interpolation weights PyTorch uses; read
    them back from the kernel (one-hot inputs) for upsampling and downsampling sizes."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        n_in, n_out = (int(v) for v in rng.integers(2, 300, size=2))
        eye = torch.eye(n_in)[None, :, None, :]
        got = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False)
        got = got[0, :, 0, :].numpy().T
        i0, i1, w0, w1, lo, hi = _source_index(
            np.arange(n_out), np.float32(n_in) / np.float32(n_out), n_in
        )
        want = np.zeros((n_out, n_in), np.float32)
        np.add.at(want, (np.arange(n_out), i0), w0)
        np.add.at(want, (np.arange(n_out), i1), w1)
        assert np.array_equal(got, want), (n_in, n_out)
        assert (lo <= i0).all() and (hi >= i1).all()


@pytest.mark.parametrize("seed", range(12))
def test_semantic_argmax_equals_full_upsample(seed):
    gen = torch.Generator().manual_seed(seed)
    c = [2, 5, 54][seed % 3]
    h, w = (int(v) for v in torch.randint(3, 40, (2,), generator=gen))
    # the input may be cut from a padded map; the output may differ from the input size
    image_size = (4 * h - int(torch.randint(0, 31, (1,), generator=gen)) % (4 * h),
                  4 * w - int(torch.randint(0, 31, (1,), generator=gen)) % (4 * w))
    if seed % 2:
        out_size = tuple(int(v) for v in torch.randint(5, 260, (2,), generator=gen))
    else:
        out_size = image_size
    smooth = F.interpolate(torch.randn(1, c, 3, 4, generator=gen) * 6, size=(h, w),
                           mode="bicubic", align_corners=False)[0]
    noisy = torch.randn(c, h, w, generator=gen) * 3
    for logits in (smooth, noisy):
        got = semantic_argmax(logits, 4, image_size, out_size)
        assert got.dtype == torch.int64 and got.shape == out_size
        assert torch.equal(got, _detectron2_labels(logits, image_size, out_size))


@pytest.fixture
def pruned_results(monkeypatch):
    """What each `_pruned_argmax` call made by `semantic_argmax` returned, in order: labels,
    or None where the full computation (step 3) decided instead."""
    import panoptic_ext.modeling.postprocess as pp

    results = []
    real = pp._pruned_argmax

    def spy(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(pp, "_pruned_argmax", spy)
    return results


def test_semantic_argmax_ties_and_full_logits(monkeypatch, pruned_results):
    import panoptic_ext.modeling.postprocess as pp

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 20, 30, generator=gen)
    logits[4] = logits[2]  # exact ties everywhere class 2 / 4 compete: lowest index wins
    for ambiguous in (pp._MAX_AMBIGUOUS, 1.0):  # 1.0: step 2 must find the ties itself
        monkeypatch.setattr(pp, "_MAX_AMBIGUOUS", ambiguous)
        for out_size in ((80, 120), (61, 97)):
            got = semantic_argmax(logits, 4, (80, 120), out_size)
            assert torch.equal(got, _detectron2_labels(logits, (80, 120), out_size))
    # ties go through the exact route
    assert len(pruned_results) == 4 and all(r is None for r in pruned_results)
    # full logits without the redundant same-size resize: identical values
    up = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    assert torch.equal(semantic_logits(logits, 4, (77, 118), (77, 118)),
                       sem_seg_postprocess(up, (77, 118), 77, 118))
    one = semantic_argmax(logits[:1], 4, (80, 120), (40, 50))
    assert one.shape == (40, 50) and int(one.abs().sum()) == 0


def test_pruned_path_runs_and_matches(monkeypatch, pruned_results):
    """Logits with large regions resolve without the full computation, even when every cell
    must be evaluated, and still match Detectron2."""
    import panoptic_ext.modeling.postprocess as pp

    monkeypatch.setattr(pp, "_MAX_AMBIGUOUS", 1.0)  # never prefer the full computation
    gen = torch.Generator().manual_seed(3)
    regions = torch.randint(0, 7, (5, 7), generator=gen)
    logits = F.one_hot(regions, 7).permute(2, 0, 1).float() * 6
    logits = F.interpolate(logits[None], size=(40, 56), mode="bilinear")[0]
    logits += F.interpolate(torch.randn(1, 7, 4, 5, generator=gen), size=(40, 56),
                            mode="bilinear")[0]
    for out_size in ((160, 224), (150, 210), (97, 301)):
        got = semantic_argmax(logits, 4, (160, 224), out_size, threads=1)
        assert torch.equal(got, _detectron2_labels(logits, (160, 224), out_size))
    noisy = torch.randn(9, 30, 40, generator=gen) * 4
    for out_size in ((120, 160), (77, 190)):
        got = semantic_argmax(noisy, 4, (120, 160), out_size)
        assert torch.equal(got, _detectron2_labels(noisy, (120, 160), out_size))
    # every call resolved on the pruned path: none fell back to the full computation
    assert len(pruned_results) == 5 and all(r is not None for r in pruned_results)


def test_semantic_resize_is_sem_seg_postprocess():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 64, 96, generator=gen)
    for image_size, out_size in (((60, 90), (60, 90)), ((60, 90), (123, 77)), ((64, 96), (31, 45))):
        want = sem_seg_postprocess(logits, image_size, *out_size)
        assert torch.equal(semantic_resize(logits, image_size, out_size), want)


def _random_detections(gen, n, image_size=(96, 128), m=28):
    h, w = image_size
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w * 1.1, h * 1.1]) - 5
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.9, h * 0.9])
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[0] = torch.tensor([w + 3.0, 10.0, w + 9.0, 20.0])  # outside: empty once clipped
    boxes[1] = torch.tensor([2.0, 3.0, 2.0, 40.0])  # zero width
    det = Instances(image_size)
    det.pred_boxes = Boxes(boxes)
    det.scores = torch.rand(n, generator=gen)
    det.pred_classes = torch.randint(0, 7, (n,), generator=gen)
    smooth = F.interpolate(torch.randn(n, 1, 5, 5, generator=gen) * 4, size=(m, m),
                           mode="bilinear", align_corners=False)
    det.pred_masks = smooth.sigmoid()
    return det


def _clone(det):
    out = Instances(det.image_size)
    for k, v in det.get_fields().items():
        out.set(k, v.clone())
    return out


@pytest.mark.parametrize("out_size", [(96, 128), (250, 310), (47, 61)])
def test_paste_for_combine_is_detector_postprocess(out_size):
    """Same instances (boxes, scores, classes, order) as detector_postprocess, and each crop
    holds exactly that instance's full-size mask, for the instances scoring at least the
    threshold; large boxes (a mask much larger than 28 px) included."""
    gen = torch.Generator().manual_seed(out_size[0])
    det = _random_detections(gen, 40)
    ref = detector_postprocess(_clone(det), *out_size)
    boxes, keep = rescale_boxes(det.pred_boxes.tensor, det.image_size, out_size)
    assert torch.equal(boxes[keep], ref.pred_boxes.tensor) and not keep[:2].any()
    got = paste_for_combine(_clone(det), *out_size, score_thresh=0.4)
    assert got.image_size == ref.image_size and len(got) == len(ref)
    assert torch.equal(got.pred_boxes.tensor, ref.pred_boxes.tensor)
    assert torch.equal(got.scores, ref.scores)
    assert torch.equal(got.pred_classes, ref.pred_classes)
    assert not got.has("pred_masks")
    pasted = 0
    for i, crop in enumerate(got.pred_mask_crops):
        if float(ref.scores[i]) < 0.4:
            assert crop is None
            continue
        y0, x0, m = crop
        full = torch.zeros(out_size, dtype=torch.bool)
        full[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m
        assert torch.equal(full, ref.pred_masks[i]), i
        pasted += int(m.any())
    assert pasted > 5


def test_paste_mask_crop_is_detectron2s_paste():
    gen = torch.Generator().manual_seed(7)
    det = _random_detections(gen, 20)
    boxes, keep = rescale_boxes(det.pred_boxes.tensor, det.image_size, (96, 128))
    boxes, masks = boxes[keep], det.pred_masks[keep]
    for i in range(len(boxes)):
        box = boxes[i : i + 1]
        want, (sy, sx) = _do_paste_mask(masks[i : i + 1], box, 96, 128, skip_empty=True)
        y0, x0, m = paste_mask_crop(masks[i : i + 1], box, 96, 128)
        assert (y0, x0) == (sy.start, sx.start)
        assert torch.equal(m, want[0] >= 0.5)


_segments = segments_from_tensors


@pytest.fixture(scope="module")
def model():
    cfg = coco_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.02  # still 50 detections, less NMS work
    return tamed_model(cfg)


def test_tensor_form_equals_eager_inference(model):
    """`panoptic_from_detections` (eager and scripted, as the export runs it) on the raw
    network outputs gives the eager model's panoptic map and segments."""
    inputs = random_inputs()
    scripted = torch.jit.script(panoptic_from_detections)
    old = model.combine.score_thresh
    with torch.no_grad():
        detections, sem_full = model.inference(inputs, do_postprocess=False)
        try:
            # about half the detections below the merge threshold
            model.combine.score_thresh = float(torch.cat([d.scores for d in detections]).median())
            eager = model.inference(inputs, outputs=("panoptic_seg",))
        finally:
            model.combine.score_thresh = old
    c = model.combine
    score_thresh = float(torch.cat([d.scores for d in detections]).median())
    things = 0
    for i, (inp, det) in enumerate(zip(inputs, detections, strict=True)):
        out_size = (inp.get("height", det.image_size[0]), inp.get("width", det.image_size[1]))
        args = (det.pred_boxes.tensor, det.scores, det.pred_classes, det.pred_masks, sem_full[i],
                det.image_size, out_size, c.overlap_thresh, float(c.stuff_area_thresh),
                score_thresh)
        pan, segs = eager[i]["panoptic_seg"]
        for fn in (panoptic_from_detections, scripted):
            got = fn(*args)
            assert torch.equal(got[0], pan)
            assert _segments(*got[1:]) == segs
            assert got[6].tolist() == [int((pan == s["id"]).sum()) for s in segs]
        things += sum(s["isthing"] for s in segs)
    assert things > 5


def test_class_argmax_is_torch_argmax():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (5, 30, 41), generator=gen).float()  # ties: first max wins
    view = scores[:, 2:25, 3:40]  # non-contiguous, as semantic_resize returns it
    for x in (scores, view):
        assert torch.equal(class_argmax(x), x.argmax(dim=0))
    scores[3, 4, 5] = float("nan")  # NaN counts as the largest, as in torch
    assert torch.equal(class_argmax(scores), scores.argmax(dim=0))


def test_semantic_resize_at_the_same_size_is_a_view():
    logits = torch.randn(3, 36, 44)
    out = semantic_resize(logits, (30, 40), (30, 40))
    assert out.data_ptr() == logits.data_ptr() and torch.equal(out, logits[:, :30, :40])
