"""A dataset's panoptic ground truth, as every scorer reads it (the evaluator, merge tuning,
worst-case analysis): the JSON indexed by image, the PNGs decoded on demand, and the mapping
of a model's contiguous category ids to the dataset's."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager

from ..data.metadata import contiguous_to_dataset_ids
from ..formats import (
    PanopticFormatError,
    check_unique_ids,
    load_panoptic_json,
    read_panoptic_png,
)
from ..utils.paths import join_inside

__all__ = ["PanopticGroundTruth"]

_REQUIRED = ("panoptic_root", "panoptic_json", "thing_dataset_id_to_contiguous_id",
             "stuff_dataset_id_to_contiguous_id")


def _stem(file_name: str) -> str:
    return os.path.splitext(os.path.basename(file_name))[0]


class PanopticGroundTruth:
    """Ground truth of a dataset registered with COCO panoptic metadata.

    The JSON is read once, on first use (building a scorer costs nothing until it scores).
    """

    def __init__(self, dataset_name: str, purpose: str = "panoptic evaluation") -> None:
        self.dataset_name = dataset_name
        self.metadata = MetadataCatalog.get(dataset_name)
        for key in _REQUIRED:
            if not hasattr(self.metadata, key):
                raise KeyError(
                    f"Metadata of dataset '{dataset_name}' has no '{key}'; {purpose} needs a "
                    "dataset registered with COCO panoptic metadata (Detectron2's "
                    "register_coco_panoptic(_separated), or panoptic_ext.data."
                    "register_panoptic_dataset for your own folder)."
                )
        self._things, self._stuff = contiguous_to_dataset_ids(self.metadata, dataset_name)
        self.thing_contiguous_ids = set(self._things)
        self._index: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._index is None:
            json_path = PathManager.get_local_path(self.metadata.panoptic_json)
            data = load_panoptic_json(json_path)
            anns = data["annotations"]
            check_unique_ids(anns, json_path)
            self._index = {
                "json": json_path,
                "root": PathManager.get_local_path(self.metadata.panoptic_root),
                "categories": {c["id"]: c for c in data["categories"]},
                "by_id": {a["image_id"]: a for a in anns},
                "by_stem": {_stem(a["file_name"]): a for a in anns},
                "image_ids": [a["image_id"] for a in anns],
                "header": {k: v for k, v in data.items() if k != "annotations"},
            }
        return self._index

    @property
    def json_path(self) -> str:
        return self._load()["json"]

    @property
    def root(self) -> str:
        """Local folder of the ground truth PNGs."""
        return self._load()["root"]

    @property
    def categories(self) -> dict[int, dict[str, Any]]:
        """Dataset category id -> the JSON's category entry."""
        return self._load()["categories"]

    @property
    def image_ids(self) -> list[Any]:
        return self._load()["image_ids"]

    @property
    def header(self) -> dict[str, Any]:
        """Everything of the JSON but its annotations (for writing predictions alike)."""
        return self._load()["header"]

    def annotation(self, inp: Mapping[str, Any]) -> Mapping[str, Any]:
        """The JSON annotation of a data-loader input, by image id, else by file name."""
        index = self._load()
        ann = index["by_id"].get(inp.get("image_id"))
        if ann is None and "file_name" in inp:
            ann = index["by_stem"].get(_stem(inp["file_name"]))
        if ann is None:
            raise PanopticFormatError(
                f"In the image with ID {inp.get('image_id')} ({inp.get('file_name')}): no "
                f"ground truth annotation with this image_id or file name in {index['json']}."
            )
        return ann

    def read(self, ann: Mapping[str, Any]) -> np.ndarray:
        """The annotation's id map."""
        index = self._load()
        return read_panoptic_png(join_inside(index["root"], ann["file_name"], index["json"]),
                                 ann["image_id"])

    def load(self, inp: Mapping[str, Any]) -> tuple[Any, np.ndarray, list]:
        """(image_id, id map, segments_info) of a data-loader input."""
        ann = self.annotation(inp)
        return ann["image_id"], self.read(ann), ann["segments_info"]

    def to_dataset_category(self, seg: Mapping[str, Any], image_id: Any) -> dict[str, Any]:
        """A predicted segment with the dataset's category id instead of the model's
        contiguous one (a segment without ``isthing`` already has dataset ids)."""
        seg = dict(seg)  # never modify the model's output
        isthing = seg.pop("isthing", None)
        if isthing is None:
            return seg
        table = self._things if isthing else self._stuff
        try:
            seg["category_id"] = table[seg["category_id"]]
        except KeyError:
            raise PanopticFormatError(
                f"In the image with ID {image_id} segment with ID {seg.get('id')} has "
                f"{'thing' if isthing else 'stuff'} category_id {seg.get('category_id')} "
                f"unknown to the metadata of '{self.dataset_name}'."
            ) from None
        return seg

    def to_dataset_categories(self, segments: Iterable[Mapping[str, Any]], image_id: Any
                              ) -> list[dict[str, Any]]:
        return [self.to_dataset_category(s, image_id) for s in segments]
