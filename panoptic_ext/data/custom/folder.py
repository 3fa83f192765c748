"""The record of one registered COCO-panoptic folder, and the registry of them by name.

Its own module because every other part of :mod:`panoptic_ext.data.custom` needs it: the
derivation reads the folder's paths, registration creates it, the config step looks it up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ...formats import load_panoptic_json

__all__ = [
    "FOLDER_SPEC",
    "NO_THING_CLASS",
    "PanopticFolder",
    "get_panoptic_folder",
    "is_registered_folder",
    "load_folder_json",
    "remember_folder",
]

FOLDER_SPEC = "NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT"
NO_THING_CLASS = "(no thing class)"  # thing_classes of a stuff-only separated dataset

_FOLDERS: dict[str, PanopticFolder] = {}  # registered name (both styles) -> its folder


@dataclass(frozen=True)
class PanopticFolder:
    """One registered COCO-panoptic folder: its sources, its cache and its categories."""

    name: str
    image_root: str
    panoptic_json: str
    panoptic_root: str
    cache: str
    categories: tuple[dict[str, Any], ...]  # normalized, sorted by id

    @property
    def instances_json(self) -> str:
        return os.path.join(self.cache, "instances.json")

    @property
    def sem_seg_root(self) -> str:
        return os.path.join(self.cache, "panoptic_stuff")

    @property
    def things(self) -> list[dict[str, Any]]:
        return [c for c in self.categories if c["isthing"]]

    @property
    def stuff(self) -> list[dict[str, Any]]:
        return [c for c in self.categories if not c["isthing"]]


def remember_folder(name: str, folder: PanopticFolder) -> None:
    """Record that the dataset ``name`` is backed by ``folder`` (replaces an older record)."""
    _FOLDERS[name] = folder


def is_registered_folder(name: str) -> bool:
    """Whether ``name`` (either style) was registered by ``register_panoptic_dataset``."""
    return name in _FOLDERS


def get_panoptic_folder(name: str) -> PanopticFolder:
    """The folder behind a name registered by ``register_panoptic_dataset`` (either style)."""
    try:
        return _FOLDERS[name]
    except KeyError:
        raise KeyError(
            f"'{name}' was not registered with register_panoptic_dataset (registered: "
            f"{sorted(_FOLDERS)})"
        ) from None


def load_folder_json(path: str, name: str) -> dict[str, Any]:
    """The panoptic JSON of dataset ``name``; a missing one names the spec part to fix."""
    try:
        return load_panoptic_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Dataset '{name}': panoptic JSON {path} does not exist; check the PANOPTIC_JSON "
            f"part of {FOLDER_SPEC}"
        ) from None
