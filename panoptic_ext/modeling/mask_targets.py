"""Mask R-CNN's mask targets from bitmask ground truth without a full-image copy per proposal.

Detectron2's ROI heads hand each sampled proposal its matched ground-truth fields by indexing.
For `BitMasks` that copies one full-image mask per proposal (512 per image by default: about
0.5 GB at 800x1344, 1 GB at Cityscapes' 1024x2048), copies the foreground ones again, and turns
those to float before cropping them to 28x28. `IndexedBitMasks` keeps the image's masks once
with an index per proposal; its `crop_and_resize` runs the same ROIAlign on the same mask for
each box, so the targets, and the loss, are Detectron2's bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from detectron2.layers import ROIAlign
from detectron2.structures import BitMasks, Instances

__all__ = ["IndexedBitMasks", "with_indexed_masks"]


class IndexedBitMasks(BitMasks):
    """`BitMasks` whose i-th mask is `masks[index[i]]`; indexing composes the index instead of
    copying masks. `tensor` still gives the gathered masks for code that reads them."""

    def __init__(self, masks: torch.Tensor, index: torch.Tensor | None = None):
        # BitMasks.__init__ would set `tensor`, a property here
        if masks.dim() != 3:
            raise ValueError(f"IndexedBitMasks: masks must be N x H x W, got {tuple(masks.shape)}")
        self.masks = masks.to(torch.bool)
        self.index = (torch.arange(len(masks), device=masks.device) if index is None
                      else index.to(device=masks.device, dtype=torch.long))
        self.image_size = masks.shape[1:]

    @property
    def tensor(self) -> torch.Tensor:  # type: ignore[override]
        return self.masks[self.index]

    @property
    def device(self) -> torch.device:
        return self.masks.device

    def to(self, *args: Any, **kwargs: Any) -> IndexedBitMasks:
        return IndexedBitMasks(self.masks.to(*args, **kwargs), self.index)

    def __getitem__(self, item: int | slice | torch.Tensor) -> IndexedBitMasks:
        if isinstance(item, int):
            return IndexedBitMasks(self.masks, self.index[item].reshape(1))
        index = self.index[item]
        if index.dim() != 1:
            raise IndexError(f"IndexedBitMasks: indexing with {item!r} gives shape "
                             f"{tuple(index.shape)}, not a list of masks")
        return IndexedBitMasks(self.masks, index)

    def __len__(self) -> int:
        return self.index.shape[0]

    def __repr__(self) -> str:
        return f"IndexedBitMasks(num_instances={len(self)}, distinct_masks={len(self.masks)})"

    def crop_and_resize(self, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
        """`BitMasks.crop_and_resize`: each mask cropped by its box, resized to mask_size and
        thresholded at 0.5, from the distinct masks alone (ROIAlign reads, per box, only the
        mask its batch index names)."""
        if len(boxes) != len(self):
            raise ValueError(f"IndexedBitMasks.crop_and_resize: {len(boxes)} boxes for "
                             f"{len(self)} masks")
        if self.device.type == "cpu":  # convert only the masks in use
            used, slot = torch.unique(self.index, return_inverse=True)
            bits = self.masks[used]
        else:  # no host sync for the unique's size
            bits, slot = self.masks, self.index
        rois = torch.cat([slot.to(dtype=boxes.dtype)[:, None], boxes], dim=1).to(self.device)
        bits = bits.to(dtype=torch.float32)
        out = ROIAlign((mask_size, mask_size), 1.0, 0, aligned=True).forward(bits[:, None], rois)
        return out.squeeze(1) >= 0.5


def with_indexed_masks(targets: Instances) -> Instances:
    """`targets` with plain `BitMasks` replaced by `IndexedBitMasks` of the same masks (the
    field is set on `targets`: pass a copy, such as `Instances.to`'s result)."""
    if targets.has("gt_masks") and type(targets.gt_masks) is BitMasks:
        targets.gt_masks = IndexedBitMasks(targets.gt_masks.tensor)
    return targets
