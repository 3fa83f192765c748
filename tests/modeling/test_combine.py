"""The panoptic merge gives Detectron2's `combine_semantic_and_instance_outputs` exactly: the CPU
crop merge, the whole-tensor merge (run here on CPU tensors) and its TorchScript form."""

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances

from panoptic_ext import add_panoptic_config
from panoptic_ext.modeling import (
    COMBINE_REGISTRY,
    HeuristicCombine,
    build_combine,
    combine_panoptic,
    combine_panoptic_crops,
)
from panoptic_ext.modeling.combine import batched
from panoptic_ext.modeling.combine.cpu import crops_numpy, sorted_kept


def _instances(scores, classes, masks):
    inst = Instances(masks.shape[1:])
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
    inst.pred_masks = masks
    return inst


def _random_case(gen, n, h=48, w=64, num_stuff=5):
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0, x0 = int(torch.randint(0, h - 2, (1,), generator=gen)), int(
            torch.randint(0, w - 2, (1,), generator=gen)
        )
        y1 = y0 + int(torch.randint(1, h - y0 + 1, (1,), generator=gen))
        x1 = x0 + int(torch.randint(1, w - x0 + 1, (1,), generator=gen))
        blob = torch.rand(y1 - y0, x1 - x0, generator=gen) < 0.8
        masks[i, y0:y1, x0:x1] = blob
    if n > 2:
        masks[1] = masks[0]  # a full duplicate
        masks[2] = False  # an empty mask
    scores = torch.rand(n, generator=gen)
    classes = torch.randint(0, 4, (n,), generator=gen)
    sem = torch.randint(0, num_stuff + 1, (h // 8, w // 8), generator=gen)
    sem = sem.repeat_interleave(8, 0).repeat_interleave(8, 1)
    return scores, classes, masks, sem


def _assert_same_as_detectron2(scores, classes, masks, sem, overlap, area, score_t):
    ref_pan, ref_segs = combine_semantic_and_instance_outputs(
        _instances(scores, classes, masks), sem, overlap, area, score_t
    )
    pan, segs = combine_panoptic(
        scores, classes, masks, sem,
        overlap_thresh=overlap, stuff_area_thresh=area, score_thresh=score_t,
    )
    assert pan.dtype == ref_pan.dtype
    assert torch.equal(pan, ref_pan)
    assert segs == ref_segs
    return pan, segs


@pytest.mark.parametrize("seed", range(40))
def test_identical_to_detectron2_random(seed):
    gen = torch.Generator().manual_seed(seed)
    n = [0, 1, 5, 30, 80][seed % 5]
    scores, classes, masks, sem = _random_case(gen, n)
    overlap = [0.0, 0.2, 0.5, 0.99, 1.0][(seed // 5) % 5]
    area = [0, 1, 64, 500, 10**6][(seed // 3) % 5]
    score_t = [0.0, 0.3, 0.5, 1.0][(seed // 7) % 4]
    _assert_same_as_detectron2(scores, classes, masks, sem, overlap, area, score_t)


def _batched_merge(scores, classes, masks, sem, overlap, area, score_t):
    """combine_panoptic's steps with the accelerator merge, on CPU tensors."""
    order, kept_scores, kept_classes = sorted_kept(scores, classes, score_t)
    return batched.combine_sorted_masks(order, kept_scores, kept_classes, masks, sem, overlap,
                                        area)


@pytest.mark.parametrize("seed", range(0, 40, 3))
def test_accelerator_merge_identical_to_detectron2(seed):
    """The sync-free instance merge used for CUDA tensors, run here on CPU tensors."""
    gen = torch.Generator().manual_seed(seed)
    n = [0, 1, 5, 30, 80][seed % 5]
    scores, classes, masks, sem = _random_case(gen, n)
    overlap = [0.0, 0.2, 0.5, 0.99, 1.0][(seed // 5) % 5]
    score_t = [0.0, 0.3, 0.5][(seed // 7) % 3]
    ref_pan, ref_segs = combine_semantic_and_instance_outputs(
        _instances(scores, classes, masks), sem, overlap, 64, score_t
    )
    pan, segs = _batched_merge(scores, classes, masks, sem, overlap, 64, score_t)
    assert torch.equal(pan, ref_pan)
    assert segs == ref_segs


def test_accelerator_merge_chain_of_overlaps():
    """Each instance covers half of the previous one: keep / drop alternates down the chain,
    the worst case for the batched merge's passes."""
    n, h, w = 12, 8, 2 * 12 + 2
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        masks[i, :, 2 * i : 2 * i + 4] = True
    scores = torch.linspace(0.99, 0.6, n)
    classes = torch.zeros(n, dtype=torch.int64)
    sem = torch.zeros(h, w, dtype=torch.int64)
    ref_pan, ref_segs = combine_semantic_and_instance_outputs(
        _instances(scores, classes, masks), sem, 0.4, 0, 0.5
    )
    pan, segs = _batched_merge(scores, classes, masks, sem, 0.4, 0, 0.5)
    assert [s["instance_id"] for s in segs] == [s["instance_id"] for s in ref_segs]
    assert [s["instance_id"] for s in segs] == list(range(0, n, 2))
    assert torch.equal(pan, ref_pan)


def test_no_instances_only_stuff():
    sem = torch.tensor([[1, 1, 2], [1, 0, 2]])
    pan, segs = _assert_same_as_detectron2(
        torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, 3, dtype=torch.bool),
        sem, 0.5, 1, 0.5,
    )
    assert pan.tolist() == [[1, 1, 2], [1, 0, 2]]
    assert [(s["category_id"], s["area"]) for s in segs] == [(1, 3), (2, 2)]


def test_all_instances_under_threshold_are_dropped():
    masks = torch.ones(3, 4, 4, dtype=torch.bool)
    pan, segs = _assert_same_as_detectron2(
        torch.tensor([0.1, 0.2, 0.49]), torch.tensor([0, 1, 2]), masks,
        torch.zeros(4, 4, dtype=torch.long), 0.5, 1, 0.5,
    )
    assert segs == [] and int(pan.max()) == 0


def test_full_overlap_drops_later_instance_and_partial_keeps_free_pixels():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True  # best
    masks[1, :, :2] = True  # same pixels: overlap 1.0 -> dropped
    masks[2, :, 1:3] = True  # half overlaps -> keeps column 2 only
    pan, segs = _assert_same_as_detectron2(
        torch.tensor([0.9, 0.8, 0.7]), torch.tensor([3, 3, 1]), masks,
        torch.zeros(4, 4, dtype=torch.long), 0.5, 1, 0.5,
    )
    assert [s["instance_id"] for s in segs] == [0, 2]
    assert pan[:, 2].tolist() == [2] * 4 and pan[:, 3].tolist() == [0] * 4


def test_tiny_stuff_is_dropped_and_empty_semantic_map():
    sem = torch.zeros(8, 8, dtype=torch.long)
    sem[0, 0] = 4  # one pixel of stuff
    pan, segs = _assert_same_as_detectron2(
        torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, 8, dtype=torch.bool),
        sem, 0.5, 2, 0.5,
    )
    assert segs == [] and int(pan.max()) == 0
    # An all-"things" semantic map with no instance: everything stays void.
    pan, segs = combine_panoptic(
        torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 8, 8, dtype=torch.bool),
        torch.zeros(8, 8, dtype=torch.long),
    )
    assert segs == [] and int(pan.abs().sum()) == 0


def test_registry_and_config_validation():
    assert "HeuristicCombine" in dict(COMBINE_REGISTRY)
    cfg = add_panoptic_config(get_cfg())
    cfg.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.3
    combine = build_combine(cfg)
    assert combine.overlap_thresh == 0.3
    cfg.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 1.5
    with pytest.raises(ValueError, match="OVERLAP_THRESH"):
        build_combine(cfg)
    cfg.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.5
    cfg.MODEL.PANOPTIC_EXT.COMBINE_NAME = "Nope"
    with pytest.raises(KeyError, match="COMBINE_NAME"):
        build_combine(cfg)


def test_negative_labels_are_stuff_as_in_detectron2():
    """Labels that are not an argmax map (negative ones) still merge as Detectron2 merges them,
    on both routes."""
    gen = torch.Generator().manual_seed(4)
    scores, classes, masks, _ = _random_case(gen, 6)
    sem = torch.randint(-3, 4, (48, 64), generator=gen)
    _assert_same_as_detectron2(scores, classes, masks, sem, 0.5, 10, 0.2)
    ref = combine_semantic_and_instance_outputs(_instances(scores, classes, masks), sem, 0.5, 10,
                                                0.2)
    pan, segs = _batched_merge(scores, classes, masks, sem, 0.5, 10, 0.2)
    assert torch.equal(pan, ref[0]) and segs == ref[1]
    assert any(s["category_id"] < 0 for s in segs)


def _instances_full(scores, classes, masks):
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
            _instances_full(scores, classes, masks), sem, 0.5, 100, thresh)
        kw = {"overlap_thresh": 0.5, "stuff_area_thresh": 100, "score_thresh": thresh}
        got = combine_panoptic(scores, classes, masks, sem, **kw)
        assert torch.equal(got[0], ref[0]) and got[1] == ref[1]
        assert sum(s["isthing"] for s in got[1]) >= (20 if thresh == 0 else 5)
        # masks as crops (numpy, and torch tensors), only for instances the merge reads
        order = [i for i in range(n) if float(scores[i]) >= thresh]
        crops = [None] * n
        for i, crop in zip(order, crops_numpy(masks.numpy(), order), strict=True):
            crops[i] = crop
        got = combine_panoptic_crops(scores, classes, crops, sem, **kw)
        assert torch.equal(got[0], ref[0]) and got[1] == ref[1]
        as_tensors = [c if c is None else (c[0], c[1], torch.from_numpy(c[2])) for c in crops]
        got = combine_panoptic_crops(scores, classes, as_tensors, sem, **kw)
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


def test_scripted_tensor_steps_equal_eager():
    """The export scripts the whole-tensor steps: scripted and eager give the same tensors."""
    resolve = torch.jit.script(batched.resolve_things)
    ids = torch.jit.script(batched.thing_ids)
    stuff = torch.jit.script(batched.assign_stuff_tensor)
    for seed in range(6):
        gen = torch.Generator().manual_seed(seed)
        scores, classes, masks, sem = _random_case(gen, [0, 1, 5, 30, 80, 12][seed])
        order = torch.argsort(-scores)
        for overlap in (0.0, 0.5):
            kept, owner = batched.resolve_things(masks[order], overlap)
            kept_s, owner_s = resolve(masks[order], overlap)
            assert torch.equal(kept, kept_s) and torch.equal(owner, owner_s)
            pan = batched.thing_ids(kept, owner)
            assert torch.equal(pan, ids(kept_s, owner_s))
            next_id = int(kept.sum()) + 1
            got = batched.assign_stuff_tensor(pan, sem, next_id, 64)
            got_s = stuff(pan, sem, next_id, 64.0)
            assert all(torch.equal(a, b) for a, b in zip(got, got_s, strict=True))


def test_with_thresholds_copies_and_checks():
    base = HeuristicCombine(overlap_thresh=0.5, stuff_area_thresh=4096, score_thresh=0.5)
    tuned = base.with_thresholds(score_thresh=0.2, stuff_area_thresh=0)
    assert type(tuned) is HeuristicCombine and tuned is not base
    assert (tuned.overlap_thresh, tuned.stuff_area_thresh, tuned.score_thresh) == (0.5, 0, 0.2)
    assert (base.overlap_thresh, base.stuff_area_thresh, base.score_thresh) == (0.5, 4096, 0.5)
    with pytest.raises(ValueError, match="INSTANCES_CONFIDENCE_THRESH"):
        base.with_thresholds(score_thresh=1.5)
