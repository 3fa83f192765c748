"""Detectron2 registration of prepared COCO-panoptic datasets, and of the builtin synthetic ones.

Importing this module registers, under ``$DETECTRON2_DATASETS`` (default ``./datasets``, the
same rule as Detectron2's builtin COCO datasets):

* ``synthetic_panoptic_{train,val}``: "standard" panoptic dicts (``pan_seg_file_name`` +
  ``segments_info``), metadata like Detectron2's ``coco_panoptic_standard``;
* ``synthetic_panoptic_{train,val}_separated``: Panoptic FPN dicts (instance ``annotations``
  + ``sem_seg_file_name``), metadata like Detectron2's ``coco_panoptic_separated``;
* ``synthetic_panoptic_{train,val}_stuffonly``: semantic-only dicts (a by-product of
  Detectron2's ``register_coco_panoptic_separated``).

Registration is lazy: no file is touched until ``DatasetCatalog.get``. Paths are fixed when
registering, as in Detectron2; to point the names at another folder (tests, a second copy)
call :func:`register_synthetic` with that root, which replaces the previous registration.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic, register_coco_panoptic_separated

from .metadata import (
    default_datasets_root,
    panoptic_separated_metadata,
    panoptic_standard_metadata,
)
from .synthetic import SPLITS, SYNTHETIC_CATEGORIES, synthetic_split_paths

__all__ = [
    "SYNTHETIC_DATASET_NAMES",
    "register_panoptic",
    "register_synthetic",
    "unregister_dataset",
]

logger = logging.getLogger(__name__)

SYNTHETIC_DATASET_NAMES: tuple[str, ...] = tuple(
    f"synthetic_panoptic_{split}{suffix}"
    for split in SPLITS
    for suffix in ("", "_separated", "_stuffonly")
)


def unregister_dataset(name: str) -> None:
    """Drop ``name`` from both catalogs, so registering it again replaces it (no assert)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def _guard(name: str, paths: Sequence[str], hint: str) -> None:
    """Wrap a registered loader so a missing file yields an actionable error, not an assert."""
    loader: Callable[[], list[dict]] = DatasetCatalog[name]
    DatasetCatalog.remove(name)

    def load() -> list[dict]:
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"Dataset '{name}' needs {', '.join(missing)}, which does not exist. {hint}".strip()
            )
        return loader()

    DatasetCatalog.register(name, load)


def register_panoptic(
    prefix: str,
    categories: Sequence[dict[str, Any]],
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str | None = None,
    instances_json: str | None = None,
    missing_hint: str = "",
    mask_format: str | None = None,
) -> list[str]:
    """Register a COCO-format panoptic dataset under ``prefix`` (standard dicts) and, when
    ``sem_seg_root`` and ``instances_json`` are given, ``prefix_separated`` and
    ``prefix_stuffonly`` (Panoptic FPN dicts). Returns the registered names.

    Re-registering a name replaces it, so module reloads and re-rooting never crash.
    ``missing_hint`` is appended to the error raised when files are missing at load time.
    ``mask_format`` ("bitmask" when the instance JSON holds RLE masks) is recorded in the
    separated metadata, so the config setup can make ``INPUT.MASK_FORMAT`` fit the data.
    """
    separated = sem_seg_root is not None and instances_json is not None
    if (sem_seg_root is None) != (instances_json is None):
        raise ValueError("give both sem_seg_root and instances_json, or neither")
    names = [prefix] + ([f"{prefix}_separated", f"{prefix}_stuffonly"] if separated else [])
    for name in names:
        unregister_dataset(name)

    register_coco_panoptic(
        prefix,
        panoptic_standard_metadata(categories),
        image_root,
        panoptic_root,
        panoptic_json,
        instances_json,
    )
    _guard(prefix, [panoptic_json, panoptic_root, image_root], missing_hint)
    if separated:
        register_coco_panoptic_separated(
            prefix,
            panoptic_separated_metadata(categories),
            image_root,
            panoptic_root,
            panoptic_json,
            sem_seg_root,
            instances_json,
        )
        if mask_format is not None:
            MetadataCatalog.get(f"{prefix}_separated").set(mask_format=mask_format)
        _guard(f"{prefix}_separated", [instances_json, sem_seg_root, image_root], missing_hint)
        _guard(f"{prefix}_stuffonly", [sem_seg_root, image_root], missing_hint)
    return names


def register_synthetic(root: str | os.PathLike | None = None) -> list[str]:
    """(Re-)register the synthetic datasets under ``root`` (default: ``$DETECTRON2_DATASETS``
    read now, else ``./datasets``); returns the registered names."""
    root = os.fspath(default_datasets_root() if root is None else root)
    hint = (
        f"Create it with `python datasets/prepare_synthetic.py --root {root}`, or set "
        "DETECTRON2_DATASETS to the folder holding synthetic_panoptic/ and call "
        "panoptic_ext.data.register_synthetic()."
    )
    names: list[str] = []
    for split in SPLITS:
        paths = synthetic_split_paths(root, split)
        names += register_panoptic(
            f"synthetic_panoptic_{split}",
            SYNTHETIC_CATEGORIES,
            missing_hint=hint,
            mask_format="bitmask",  # the generator writes RLE instance masks
            **paths,
        )
    logger.debug("Registered %s under %s", names, root)
    return names


register_synthetic()
