"""The `segments_info` record: every merge implementation and the export's tensors build theirs
here, so they stay the records Detectron2's PanopticFPN returns."""

from __future__ import annotations

from typing import Any

__all__ = ["SegmentsInfo", "segment_info"]

SegmentsInfo = list[dict[str, Any]]


def segment_info(seg_id: int, category_id: int, *, score: float | None = None,
                 instance_id: int | None = None, area: int | None = None) -> dict[str, Any]:
    """A thing's record (given its `instance_id`: id, score, category, instance) or a stuff
    record (id, category, pixel area), keys in Detectron2's order."""
    if instance_id is not None:
        return {"id": seg_id, "isthing": True, "score": score, "category_id": category_id,
                "instance_id": instance_id}
    return {"id": seg_id, "isthing": False, "category_id": category_id, "area": area}
