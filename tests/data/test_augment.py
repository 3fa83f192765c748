import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks
from PIL import Image
from pycocotools import mask as mask_util

from panoptic_ext import add_panoptic_config
from panoptic_ext.data.augment import (
    ClipCropTransform,
    PanopticDatasetMapper,
    RandomCropKeepingInstances,
    annotations_to_cropped_instances,
    clip_polygon,
)

H, W = 64, 128
# Two rectangles and a triangle, as polygons (x y pairs): left one, right one, one straddling.
LEFT = [4.0, 4.0, 30.0, 4.0, 30.0, 40.0, 4.0, 40.0]
RIGHT = [90.0, 10.0, 120.0, 10.0, 120.0, 50.0, 90.0, 50.0]
TRIANGLE = [40.0, 20.0, 80.0, 20.0, 40.0, 60.0]


def _rle(poly):
    rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _annotations(fmt):
    annos = []
    for cls, poly in enumerate((LEFT, RIGHT, TRIANGLE)):
        xs, ys = poly[0::2], poly[1::2]
        annos.append({
            "bbox": [min(xs), min(ys), max(xs), max(ys)],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": cls,
            "iscrowd": 0,
            "segmentation": [list(poly)] if fmt == "polygon" else _rle(poly),
        })
    return annos


def _masks(instances):
    masks = instances.gt_masks
    if isinstance(masks, PolygonMasks):
        h, w = instances.image_size
        from detectron2.structures.masks import polygons_to_bitmask
        return np.stack([polygons_to_bitmask(p, h, w) for p in masks.polygons]) \
            if len(masks) else np.zeros((0, h, w), bool)
    return masks.tensor.numpy()


def test_clip_polygon():
    square = np.array([[-10, -10], [10, -10], [10, 10], [-10, 10]], float)
    clipped = clip_polygon(square, 100, 100)
    assert clipped.min() == 0 and clipped.max() == 10
    assert clip_polygon(square + 200, 100, 100) is None
    assert clip_polygon(np.array([[0, 0], [5, 0], [10, 0]]), 100, 100) is None  # no area


# (INPUT.MASK_FORMAT, annotation format); RLE cannot become polygons (in Detectron2 neither).
@pytest.mark.parametrize("fmt,source", [("polygon", "polygon"), ("bitmask", "polygon"),
                                        ("bitmask", "rle")])
def test_crop_drops_removed_and_clips_the_rest(fmt, source):
    crop = ClipCropTransform(35, 0, 50, 48, W, H)  # x 35..85, y 0..48
    inst = annotations_to_cropped_instances(
        _annotations(source), T.TransformList([crop]), (48, 50), mask_format=fmt)
    # LEFT (x<=30) and RIGHT (x>=90) are cropped away; the triangle is clipped.
    assert inst.gt_classes.tolist() == [2]
    assert isinstance(inst.gt_masks, PolygonMasks if fmt == "polygon" else BitMasks)
    mask = _masks(inst)[0]
    assert mask.shape == (48, 50)
    ys, xs = np.nonzero(mask)
    box = inst.gt_boxes.tensor[0].tolist()
    # The box is the cropped shape's, not the crop of the original box (which had y to 60).
    assert box[0] == pytest.approx(5, abs=1) and box[1] == pytest.approx(20, abs=1)
    assert box[3] == pytest.approx(48, abs=1) and box[2] <= 50
    assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.max() <= box[3]


@pytest.mark.parametrize("fmt", ["polygon", "bitmask"])
def test_everything_cropped_away_keeps_an_empty_mask_field(fmt):
    crop = ClipCropTransform(0, 55, 20, 9, W, H)  # a strip below every shape's left part
    inst = annotations_to_cropped_instances(
        _annotations("polygon"), [crop], (9, 20), mask_format=fmt)
    assert len(inst) == 0
    assert inst.has("gt_masks") and len(inst.gt_masks) == 0


def _cfg(fmt, crop=True):
    cfg = add_panoptic_config(get_cfg())
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = fmt
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.CROP.ENABLED = crop
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [32, 48]
    return cfg


def test_crop_comes_after_the_resize():
    mapper = PanopticDatasetMapper(_cfg("polygon"), True)
    kinds = [type(a) for a in mapper.augmentations.augs]
    assert kinds[:2] == [T.ResizeShortestEdge, RandomCropKeepingInstances]
    plain = PanopticDatasetMapper(_cfg("polygon", crop=False), True)
    assert RandomCropKeepingInstances not in [type(a) for a in plain.augmentations.augs]


@pytest.mark.parametrize("fmt", ["polygon", "bitmask"])
def test_mapper_masks_boxes_and_stuff_agree(tmp_path, fmt):
    rng = np.random.default_rng(0)
    img = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(img)
    sem = np.zeros((H, W), np.uint8)
    sem[:, 64:] = 1
    Image.fromarray(sem).save(tmp_path / "sem.png")
    mapper = PanopticDatasetMapper(_cfg(fmt), True)
    source = "polygon" if fmt == "polygon" else "rle"
    for seed in range(8):
        np.random.seed(seed)
        d = {"file_name": str(img), "height": H, "width": W, "image_id": 1,
             "sem_seg_file_name": str(tmp_path / "sem.png"), "annotations": _annotations(source)}
        out = mapper(d)
        assert tuple(out["image"].shape[1:]) == (32, 48) == tuple(out["sem_seg"].shape)
        inst = out["instances"]
        assert inst.has("gt_masks")
        masks = _masks(inst)
        assert masks.shape[1:] == (32, 48)
        for m, box in zip(masks, inst.gt_boxes.tensor, strict=True):
            assert m.any()
            ys, xs = np.nonzero(m)
            assert box[0] <= xs.min() + 1 and xs.max() <= box[2] + 1
            assert box[1] <= ys.min() + 1 and ys.max() <= box[3] + 1
            assert torch.all(box >= 0) and box[2] <= 48 and box[3] <= 32


def test_without_a_crop_boxes_are_the_annotations():
    flip = T.HFlipTransform(W)
    annos = _annotations("polygon")
    annos[0]["bbox"] = [0.0, 0.0, 40.0, 50.0]  # looser than the mask: kept as given
    inst = annotations_to_cropped_instances(annos, [flip], (H, W), mask_format="polygon")
    assert len(inst) == 3
    assert inst.gt_boxes.tensor[0].tolist() == [W - 40.0, 0.0, W - 0.0, 50.0]
