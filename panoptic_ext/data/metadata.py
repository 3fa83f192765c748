"""Detectron2 metadata of a panoptic category list, and the id maps between its two id spaces.

A COCO panoptic dataset names categories by *dataset ids* (any positive integers, as in its
JSON); models predict *contiguous ids* (0..N-1). Registration builds the maps between them
here, and everything that turns predictions back into files (evaluator, demo, export) inverts
them with :func:`contiguous_to_dataset_ids`, so both directions follow one rule.

Pure functions of a category list: no catalog, no file is touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..formats import PanopticFormatError

__all__ = [
    "THINGS_STUFF_COLOR",
    "THING_LABEL",
    "VOID_LABEL",
    "DatasetMetadataError",
    "contiguous_to_dataset_ids",
    "dataset_categories",
    "default_datasets_root",
    "panoptic_separated_metadata",
    "panoptic_standard_metadata",
    "semantic_label_map",
]

# Colour of the extra "things" stuff class; the value Detectron2 uses for COCO.
THINGS_STUFF_COLOR = [82, 18, 128]
THING_LABEL = 0  # stuff-PNG label of every thing pixel (the merged "things" class)
VOID_LABEL = 255  # stuff-PNG label of unlabeled pixels

_THING_MAP = "thing_dataset_id_to_contiguous_id"
_STUFF_MAP = "stuff_dataset_id_to_contiguous_id"


class DatasetMetadataError(KeyError, ValueError):
    """A dataset's metadata lacks (or has a broken) id map; the message names the dataset.

    A ``KeyError`` like the missing-metadata errors Detectron2 code catches, and a
    ``ValueError`` for a map that exists but cannot be inverted.
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def default_datasets_root() -> str:
    """Same lookup as Detectron2's builtin datasets, so both find the same files."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def _sorted_categories(categories: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    ids = [int(c["id"]) for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate category ids in {ids}")
    for c in categories:
        missing = {"id", "name", "isthing", "color"} - set(c)
        if missing:
            raise ValueError(f"category {c!r} lacks {sorted(missing)}")
    return sorted(categories, key=lambda c: int(c["id"]))


def panoptic_standard_metadata(categories: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metadata for "standard" panoptic dicts, in Detectron2's ``coco_panoptic_standard`` style.

    Things and stuff share one contiguous space (categories sorted by id), and both
    ``thing_*`` and ``stuff_*`` list every class because Detectron2's visualizer indexes them
    that way.
    """
    cats = _sorted_categories(categories)
    names = [c["name"] for c in cats]
    colors = [list(c["color"]) for c in cats]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": [list(c) for c in colors],
        _THING_MAP: {int(c["id"]): i for i, c in enumerate(cats) if c["isthing"]},
        _STUFF_MAP: {int(c["id"]): i for i, c in enumerate(cats) if not c["isthing"]},
    }


def panoptic_separated_metadata(categories: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Metadata for Panoptic FPN's "separated" dicts, like Detectron2's COCO separated metadata.

    Things get their own contiguous ids 0..T-1 (sorted by id, matching ``load_coco_json``);
    stuff gets 1..K with 0 reserved for the merged "things" class, matching the semantic PNGs.
    """
    cats = _sorted_categories(categories)
    things = [c for c in cats if c["isthing"]]
    stuff = [c for c in cats if not c["isthing"]]
    stuff_map = {int(c["id"]): i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = THING_LABEL
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [list(c["color"]) for c in things],
        _THING_MAP: {int(c["id"]): i for i, c in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for c in stuff],
        "stuff_colors": [list(THINGS_STUFF_COLOR)] + [list(c["color"]) for c in stuff],
        _STUFF_MAP: stuff_map,
    }


def semantic_label_map(categories: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Category id -> stuff-PNG label: things 0, stuff 1..K by ascending id (Detectron2's order).

    The order must match ``stuff_dataset_id_to_contiguous_id`` of the separated metadata, which
    is built from the stuff categories sorted by id.
    """
    seen: set[int] = set()
    for cat in categories:
        if "id" not in cat or "isthing" not in cat:
            raise PanopticFormatError(f"category {cat!r} lacks 'id' or 'isthing'")
        if cat["id"] in seen:
            raise PanopticFormatError(f"category id {cat['id']} appears twice in 'categories'")
        seen.add(cat["id"])
    stuff_ids = sorted(int(c["id"]) for c in categories if not c["isthing"])
    if len(stuff_ids) >= VOID_LABEL:
        raise PanopticFormatError(
            f"{len(stuff_ids)} stuff categories do not fit in a uint8 PNG with 255 as void"
        )
    mapping = {int(c["id"]): THING_LABEL for c in categories if c["isthing"]}
    mapping.update({cid: i + 1 for i, cid in enumerate(stuff_ids)})
    return mapping


def _field(meta: Any, key: str) -> Any:
    if isinstance(meta, Mapping):
        return meta.get(key)
    return getattr(meta, key, None)  # detectron2 Metadata raises AttributeError when unset


def contiguous_to_dataset_ids(meta: Any, dataset_name: str | None = None
                              ) -> tuple[dict[int, int], dict[int, int]]:
    """(thing_map, stuff_map): contiguous id -> dataset category id, for writing predictions.

    ``meta`` is a Detectron2 ``Metadata`` (or a dict like :func:`panoptic_separated_metadata`'s).
    Both ``*_dataset_id_to_contiguous_id`` maps must be there: without them there is no right
    answer, and falling back to contiguous ids would write files that look valid but name the
    wrong categories. An empty map is fine (a stuff-only dataset has no thing ids). Raises
    :class:`DatasetMetadataError` naming the dataset (``dataset_name``, else ``meta.name``).
    """
    name = dataset_name or _field(meta, "name") or "<unnamed>"
    maps = []
    for key in (_THING_MAP, _STUFF_MAP):
        forward = _field(meta, key)
        if not isinstance(forward, Mapping):
            why = "has no" if forward is None else f"has a non-mapping ({type(forward).__name__})"
            raise DatasetMetadataError(
                f"Metadata of dataset '{name}' {why} '{key}', so predicted (contiguous) class "
                "ids cannot be turned into the dataset's category ids. Register it with COCO "
                "panoptic metadata (panoptic_ext.data.register_panoptic / "
                "register_panoptic_dataset, or Detectron2's register_coco_panoptic(_separated))."
            )
        inverse: dict[int, int] = {}
        for dataset_id, contiguous in forward.items():
            contiguous, dataset_id = int(contiguous), int(dataset_id)
            if contiguous in inverse:
                raise DatasetMetadataError(
                    f"Metadata of dataset '{name}': '{key}' maps both category ids "
                    f"{inverse[contiguous]} and {dataset_id} to class {contiguous}; a "
                    "prediction of that class could be either, so fix the registration"
                )
            inverse[contiguous] = dataset_id
        maps.append(inverse)
    return maps[0], maps[1]


def dataset_categories(meta: Any, dataset_name: str | None = None) -> list[dict[str, Any]]:
    """The dataset's categories as a COCO panoptic JSON lists them (``id``, ``name``,
    ``isthing``), rebuilt from its metadata: things then stuff, each in contiguous order.

    For files written from predictions (demo, export), so they name classes as the dataset
    does. The merged "things" stuff class of separated metadata (dataset id 0) is not a
    category and is left out. Raises :class:`DatasetMetadataError` like
    :func:`contiguous_to_dataset_ids`, or when a class has no name.
    """
    name = dataset_name or _field(meta, "name") or "<unnamed>"
    things, stuff = contiguous_to_dataset_ids(meta, name)
    cats: list[dict[str, Any]] = []
    seen: set[int] = set()
    for isthing, key, inverse in ((1, "thing_classes", things), (0, "stuff_classes", stuff)):
        classes = _field(meta, key)
        for contiguous, dataset_id in sorted(inverse.items()):
            if dataset_id in seen or (not isthing and dataset_id == 0):
                continue  # 0: the merged "things" class, not a category of the JSON
            if classes is None or not 0 <= contiguous < len(classes):
                raise DatasetMetadataError(
                    f"Metadata of dataset '{name}': class {contiguous} (category id "
                    f"{dataset_id}) has no name in '{key}'"
                )
            seen.add(dataset_id)
            cats.append({"id": dataset_id, "name": classes[contiguous], "isthing": isthing})
    return cats
