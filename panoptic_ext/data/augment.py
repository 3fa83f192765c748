"""Crop augmentation that keeps instance masks and boxes consistent with the crop.

Detectron2's ``INPUT.CROP`` path has two gaps for Panoptic FPN (Detectron2 issue #3194): a
crop that leaves an image with no instance drops the ``gt_masks`` field altogether, and polygon
masks are cropped with shapely, which is not a Detectron2 dependency. Here:

* :class:`ClipCropTransform` crops polygons itself (Sutherland-Hodgman against the crop window,
  no shapely); bitmasks and the stuff map are sliced as usual;
* :func:`annotations_to_cropped_instances` drops instances whose mask the crop removed, clips
  the others, recomputes every box from its cropped mask, and always sets ``gt_masks`` (empty
  when nothing is left), for both ``INPUT.MASK_FORMAT`` values;
* :class:`PanopticDatasetMapper` is Detectron2's ``DatasetMapper`` with the two above, driven by
  Detectron2's own keys (``INPUT.CROP.{ENABLED,TYPE,SIZE}``). With a crop it applies the resize
  first and then crops a window of the resized image (scale jitter, then a fixed-size crop, as
  the Panoptic FPN paper trains on Cityscapes), then the flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances, PolygonMasks

__all__ = [
    "ClipCropTransform",
    "PanopticDatasetMapper",
    "RandomCropKeepingInstances",
    "annotations_to_cropped_instances",
    "build_train_augmentations",
    "clip_polygon",
]


def _clip_edge(points: np.ndarray, axis: int, limit: float, keep_below: bool) -> np.ndarray:
    """One Sutherland-Hodgman pass: the part of the closed polygon on one side of a line."""
    if len(points) == 0:
        return points
    out: list[np.ndarray] = []
    prev = points[-1]
    prev_in = prev[axis] <= limit if keep_below else prev[axis] >= limit
    for cur in points:
        cur_in = cur[axis] <= limit if keep_below else cur[axis] >= limit
        if cur_in != prev_in:  # the edge crosses the line: add the crossing point
            t = (limit - prev[axis]) / (cur[axis] - prev[axis])
            out.append(prev + t * (cur - prev))
        if cur_in:
            out.append(cur)
        prev, prev_in = cur, cur_in
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def clip_polygon(points: np.ndarray, width: float, height: float) -> np.ndarray | None:
    """The polygon (Nx2, x y) clipped to ``[0, width] x [0, height]``; None when nothing of
    positive area is left (the caller drops it)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    for axis, limit, below in ((0, 0.0, False), (0, width, True), (1, 0.0, False),
                               (1, height, True)):
        pts = _clip_edge(pts, axis, limit, below)
    if len(pts) < 3 or _area(pts) <= 0:
        return None
    return pts


class ClipCropTransform(T.CropTransform):
    """``CropTransform`` whose polygons are clipped to the window here (no shapely needed);
    a polygon entirely outside is dropped, so an instance may end with no polygon at all."""

    def apply_polygons(self, polygons: list) -> list:
        out = []
        for poly in polygons:
            shifted = np.asarray(poly, dtype=np.float64).reshape(-1, 2) - (self.x0, self.y0)
            clipped = clip_polygon(shifted, self.w, self.h)
            if clipped is not None:
                out.append(clipped)
        return out


class RandomCropKeepingInstances(T.RandomCrop):
    """Detectron2's ``RandomCrop`` (same ``crop_type``/``crop_size``) giving a
    :class:`ClipCropTransform`."""

    def get_transform(self, image: np.ndarray) -> T.Transform:
        crop = super().get_transform(image)
        return ClipCropTransform(crop.x0, crop.y0, crop.w, crop.h, crop.orig_w, crop.orig_h)


def _empty_masks(mask_format: str, image_size: tuple[int, int]) -> PolygonMasks | BitMasks:
    if mask_format == "polygon":
        return PolygonMasks([])
    return BitMasks(torch.zeros((0, *image_size), dtype=torch.bool))


def _has_mask(segm: Any) -> bool:
    if isinstance(segm, list):  # polygons, after the crop dropped those outside
        return any(len(np.asarray(p).reshape(-1)) >= 6 for p in segm)
    if isinstance(segm, np.ndarray):  # a decoded RLE / bitmask, already cropped
        return bool(segm.any())
    return True


def annotations_to_cropped_instances(
    annotations: Sequence[dict],
    transforms: T.TransformList | Sequence[T.Transform],
    image_size: tuple[int, int],
    mask_format: str = "polygon",
    use_mask: bool = True,
    use_keypoint: bool = False,
    keypoint_hflip_indices: np.ndarray | None = None,
) -> Instances:
    """Transform a dict's (non-crowd) annotations into ``Instances`` for the cropped image.

    When the transforms include a crop, an instance whose mask the crop removed is dropped and
    a kept one has its mask clipped and its box recomputed from the clipped mask (the crop of a
    box is not the box of the cropped shape); without a crop, boxes and masks are used as
    Detectron2's ``DatasetMapper`` uses them. With ``use_mask`` the result always has
    ``gt_masks`` (in ``mask_format``), also when no instance is left, so a batch never lacks
    the field.
    """
    if not isinstance(transforms, T.TransformList):
        transforms = T.TransformList(list(transforms))
    cropped = use_mask and any(isinstance(t, T.CropTransform) for t in transforms.transforms)
    kept = []
    for obj in annotations:
        if obj.get("iscrowd", 0):
            continue
        obj = dict(obj)
        if not use_mask:
            obj.pop("segmentation", None)
        if not use_keypoint:
            obj.pop("keypoints", None)
        obj = utils.transform_instance_annotations(
            obj, transforms, image_size, keypoint_hflip_indices=keypoint_hflip_indices)
        if cropped and "segmentation" in obj:
            segm = obj["segmentation"]
            if isinstance(segm, list):
                segm = [p for p in segm if len(np.asarray(p).reshape(-1)) >= 6]
                obj["segmentation"] = segm
            if not _has_mask(segm):
                continue
        kept.append(obj)
    instances = utils.annotations_to_instances(kept, image_size, mask_format=mask_format)
    if use_mask:
        if not instances.has("gt_masks"):
            instances.gt_masks = _empty_masks(mask_format, image_size)
        elif cropped and len(instances):
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
    return utils.filter_empty_instances(instances)


def build_train_augmentations(cfg: CfgNode) -> list[T.Augmentation]:
    """Detectron2's training augmentations, with the ``INPUT.CROP`` crop (when enabled) placed
    after the resize: scale jitter of the whole image, then a window of the jittered image."""
    augs = utils.build_augmentation(cfg, is_train=True)  # [ResizeShortestEdge, RandomFlip?]
    if cfg.INPUT.CROP.ENABLED:
        augs.insert(1, RandomCropKeepingInstances(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    return augs


class PanopticDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` whose crop keeps instances, masks and boxes consistent.

    Without ``INPUT.CROP.ENABLED`` it maps like ``DatasetMapper`` except that ``gt_masks`` is
    present (possibly empty) on every training image. Inference (``is_train``
    False) is unchanged.
    """

    @configurable
    def __init__(self, is_train: bool, **kwargs: Any):
        super().__init__(is_train, **kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict[str, Any]:
        ret = super().from_config(cfg, is_train)
        if is_train:
            ret["augmentations"] = build_train_augmentations(cfg)
            ret["recompute_boxes"] = False  # done per instance in _transform_annotations
        return ret

    def _transform_annotations(self, dataset_dict: dict, transforms: T.TransformList,
                               image_shape: tuple[int, int]) -> None:
        dataset_dict["instances"] = annotations_to_cropped_instances(
            dataset_dict.pop("annotations"),
            transforms,
            image_shape,
            mask_format=self.instance_mask_format,
            use_mask=self.use_instance_mask,
            use_keypoint=self.use_keypoint,
            keypoint_hflip_indices=self.keypoint_hflip_indices,
        )
