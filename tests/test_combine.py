import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Instances

from panoptic_ext import add_panoptic_config
from panoptic_ext.modeling import COMBINE_REGISTRY, build_combine, combine_panoptic


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
    """combine_panoptic's steps with the accelerator instance merge, on CPU tensors."""
    from panoptic_ext.modeling import combine as combine_mod

    order, kept_scores, kept_classes = combine_mod._sorted_kept(scores, classes, score_t)
    pan = torch.zeros_like(sem, dtype=torch.int32)
    segs: list = []
    next_id = combine_mod._paste_things_batched(
        order, kept_scores, kept_classes, masks, pan, overlap, segs
    )
    combine_mod._assign_stuff(pan, sem, next_id, area, segs)
    return pan, segs


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
