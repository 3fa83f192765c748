"""The fast inference path gives Detectron2's results: semantic argmax, panoptic-only inference,
the merge at many instances, and reduced-precision inference that still yields valid output."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Instances

from panoptic_ext import add_panoptic_config
from panoptic_ext.modeling import combine_panoptic, combine_panoptic_crops
from panoptic_ext.modeling.combine import _crops_numpy
from panoptic_ext.modeling.postprocess import (
    _source_index,
    semantic_argmax,
    semantic_argmax_stats,
    semantic_logits,
)

from .conftest import COCO_3X
from .test_detectron2_equivalence import _low_thresholds, _tame_random_weights


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


def test_semantic_argmax_ties_and_full_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 20, 30, generator=gen)
    logits[4] = logits[2]  # exact ties everywhere class 2 / 4 compete: lowest index wins
    before = semantic_argmax_stats["fallbacks"]
    for out_size in ((80, 120), (61, 97)):
        got = semantic_argmax(logits, 4, (80, 120), out_size)
        assert torch.equal(got, _detectron2_labels(logits, (80, 120), out_size))
    assert semantic_argmax_stats["fallbacks"] > before  # ties go through the exact route
    # full logits without the redundant same-size resize: identical values
    up = F.interpolate(logits[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    assert torch.equal(semantic_logits(logits, 4, (77, 118), (77, 118)),
                       sem_seg_postprocess(up, (77, 118), 77, 118))
    one = semantic_argmax(logits[:1], 4, (80, 120), (40, 50))
    assert one.shape == (40, 50) and int(one.abs().sum()) == 0


def _instances(scores, classes, masks):
    inst = Instances(masks.shape[1:])
    inst.scores, inst.pred_classes, inst.pred_masks = scores, classes, masks
    return inst


def test_combine_identical_at_many_instances():
    gen = torch.Generator().manual_seed(0)
    n, h, w = 70, 180, 260
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y, x = int(torch.randint(0, h - 20, (1,), generator=gen)), int(
            torch.randint(0, w - 20, (1,), generator=gen))
        bh, bw = (int(v) for v in torch.randint(5, 80, (2,), generator=gen))
        masks[i, y : y + bh, x : x + bw] = torch.rand(min(bh, h - y), min(bw, w - x),
                                                      generator=gen) < 0.9
    masks[5] = False
    scores = torch.rand(n, generator=gen)
    scores[10] = scores[11]  # a tie: the order must follow Detectron2's argsort
    classes = torch.randint(0, 80, (n,), generator=gen)
    sem = torch.randint(0, 20, (h // 10, w // 10), generator=gen)
    sem = sem.repeat_interleave(10, 0).repeat_interleave(10, 1)
    for thresh in (0.0, 0.5):
        ref = combine_semantic_and_instance_outputs(
            _instances(scores, classes, masks), sem, 0.5, 100, thresh)
        kw = {"overlap_thresh": 0.5, "stuff_area_thresh": 100, "score_thresh": thresh}
        got = combine_panoptic(scores, classes, masks, sem, **kw)
        assert torch.equal(got[0], ref[0]) and got[1] == ref[1]
        assert sum(s["isthing"] for s in got[1]) >= (20 if thresh == 0 else 5)
        # masks as crops, only for instances the merge reads
        order = [i for i in range(n) if float(scores[i]) >= thresh]
        crops = [None] * n
        for i, crop in zip(order, _crops_numpy(masks.numpy(), order), strict=True):
            crops[i] = crop
        got = combine_panoptic_crops(scores, classes, crops, sem, **kw)
        assert torch.equal(got[0], ref[0]) and got[1] == ref[1]
        # box hints: the pasting boxes, boxes too small for their masks (the exact fallback
        # must catch it), and nonsense boxes all give Detectron2's result
        ys, xs = masks.any(dim=2), masks.any(dim=1)
        first = lambda a: a.float().argmax(dim=1).float()  # noqa: E731
        last = lambda a: (a.shape[1] - a.flip(1).float().argmax(dim=1)).float()  # noqa: E731
        exact = torch.stack([first(xs), first(ys), last(xs), last(ys)], dim=1)
        shrunk = exact + torch.tensor([6.0, 6.0, -6.0, -6.0])
        nonsense = torch.full_like(exact, float("nan"))
        for boxes in (exact, shrunk, nonsense):
            got = combine_panoptic(scores, classes, masks, sem, boxes=boxes, **kw)
            assert torch.equal(got[0], ref[0]) and got[1] == ref[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(COCO_3X)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    _low_thresholds(cfg)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.02  # still 50 detections, less NMS work
    m = build_model(cfg).eval()
    _tame_random_weights(m)
    return m, cfg


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return [
        {"image": torch.randint(0, 256, (3, 128, 192), generator=gen).float(),
         "height": 250, "width": 310},
        {"image": torch.randint(0, 256, (3, 96, 128), generator=gen).float()},
    ]


def test_panoptic_only_equals_full_path(model):
    m, _ = model
    inputs = _inputs()
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
    with pytest.raises(ValueError, match="outputs"):
        m.inference(inputs, outputs=("nope",))


def test_bf16_precision_gives_valid_output(model):
    m, cfg = model
    cfg = cfg.clone()
    cfg.TEST.PRECISION = "bf16"
    bf = build_model(cfg).eval()
    bf.load_state_dict(m.state_dict())
    with torch.no_grad():
        out = bf(_inputs())
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


def test_pruned_path_runs_and_matches(monkeypatch):
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
    before = semantic_argmax_stats["fallbacks"]
    for out_size in ((160, 224), (150, 210), (97, 301)):
        got = semantic_argmax(logits, 4, (160, 224), out_size, threads=1)
        assert torch.equal(got, _detectron2_labels(logits, (160, 224), out_size))
    noisy = torch.randn(9, 30, 40, generator=gen) * 4
    for out_size in ((120, 160), (77, 190)):
        got = semantic_argmax(noisy, 4, (120, 160), out_size)
        assert torch.equal(got, _detectron2_labels(noisy, (120, 160), out_size))
    assert semantic_argmax_stats["fallbacks"] == before


def test_fast_modes_close_to_exact_and_follow_weight_changes(model):
    """channels_last + folded norms change only low bits; folded weights follow in-place
    weight updates (as load_state_dict makes)."""
    m, cfg = model
    cfg = cfg.clone()
    cfg.MODEL.PANOPTIC_EXT.CHANNELS_LAST = False
    cfg.MODEL.PANOPTIC_EXT.FUSE_NORM = False
    exact = build_model(cfg).eval()
    exact.load_state_dict(m.state_dict())
    inputs = _inputs()[1:]
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
