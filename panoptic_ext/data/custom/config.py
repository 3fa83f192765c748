"""The config side of your own folders: register ``DATASETS.PANOPTIC_FOLDERS`` / ``--dataset``
and make the model config fit the datasets used.

What has to follow the data, whatever base config the run starts from:

* ``MODEL.ROI_HEADS.NUM_CLASSES`` = #things, ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` = #stuff + 1;
* a stuff-only dataset: one placeholder thing class and ``SCORE_THRESH_TEST`` 1.0;
* ``INPUT.MASK_FORMAT`` "bitmask": the derived instance masks are RLE, which Detectron2's
  "polygon" format (its default, and COCO configs') cannot read.

A key given on the command line (``opts``) is the user's choice and is kept (a head size that
disagrees is noted); a choice that cannot work (polygon masks) is refused at startup instead of
failing at the first batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog

from .derive import prepare_panoptic_dataset
from .folder import get_panoptic_folder, is_registered_folder
from .register import parse_folder_spec, register_panoptic_folders

__all__ = ["configure_panoptic_folders", "prepare_cfg_folders"]

_ROI_KEY = "MODEL.ROI_HEADS.NUM_CLASSES"
_SEM_KEY = "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
_SCORE_KEY = "MODEL.ROI_HEADS.SCORE_THRESH_TEST"
_MASK_KEY = "INPUT.MASK_FORMAT"


def _node(cfg: CfgNode, key: str) -> tuple[CfgNode, str]:
    node_path, leaf = key.rsplit(".", 1)
    node = cfg
    for part in node_path.split("."):
        node = node[part]
    return node, leaf


def _mask_format_note(cfg: CfgNode, train_names: Sequence[str], explicit: set[str]
                      ) -> str | None:
    """Switch polygon masks to bitmask for datasets whose metadata says their instance masks
    are RLE (``mask_format`` "bitmask": our folders and the synthetic data); refuse if the
    command line asked for polygon, since the first training batch would fail."""
    registered = set(MetadataCatalog.list())
    derived = [n for n in train_names if n in registered
               and MetadataCatalog.get(n).get("mask_format", None) == "bitmask"]
    if not derived or cfg.INPUT.MASK_FORMAT != "polygon":
        return None
    if _MASK_KEY in explicit:
        raise ValueError(
            f"{_MASK_KEY} polygon is on the command line, but DATASETS.TRAIN uses '{derived[0]}', "
            "whose instance masks are RLE (derived from panoptic PNGs); Detectron2 reads RLE "
            f"masks only with {_MASK_KEY} bitmask. Pass {_MASK_KEY} bitmask (or drop the option)."
        )
    cfg.INPUT.MASK_FORMAT = "bitmask"
    return (f"{_MASK_KEY}: polygon -> bitmask (the instance masks of '{derived[0]}' are RLE, "
            "derived from panoptic PNGs)")


def configure_panoptic_folders(
    cfg: CfgNode,
    specs: Sequence[str] = (),
    opts: Sequence[str] = (),
    eval_only: bool = False,
) -> list[str]:
    """Register ``DATASETS.PANOPTIC_FOLDERS`` plus ``specs`` and fit the config to the
    categories of the datasets used (registered here or by ``register_panoptic_dataset``).

    ``specs`` (e.g. from ``--dataset``) are appended to ``DATASETS.PANOPTIC_FOLDERS`` so the
    saved config.yaml reproduces the run. When DATASETS.TRAIN (DATASETS.TEST if ``eval_only``)
    names such datasets, ROI_HEADS.NUM_CLASSES becomes #things and SEM_SEG_HEAD.NUM_CLASSES
    #stuff + 1, unless the key is in ``opts`` (the command line wins). A stuff-only dataset
    gets one placeholder thing class (Detectron2's minimum) and SCORE_THRESH_TEST 1.0, so it
    never predicts an instance. When training on them, INPUT.MASK_FORMAT "polygon" becomes
    "bitmask" (their masks are RLE); "polygon" given in ``opts`` raises ValueError. ``cfg``
    must not be frozen; returns lines worth logging.
    """
    folders = [*cfg.DATASETS.get("PANOPTIC_FOLDERS", []), *specs]
    # Absolute paths, so the saved config.yaml works from any folder.
    folders = list(dict.fromkeys(
        ":".join([name, *(os.path.abspath(p) for p in paths)])
        for name, *paths in map(parse_folder_spec, folders)
    ))
    if folders:
        cfg.DATASETS.PANOPTIC_FOLDERS = folders
        register_panoptic_folders(folders)
    notes: list[str] = []
    explicit = {str(k) for k in list(opts)[0::2]}
    if not eval_only:  # only the training mapper reads instance masks
        note = _mask_format_note(cfg, cfg.DATASETS.TRAIN, explicit)
        if note:
            notes.append(note)
    key = "DATASETS.TEST" if eval_only else "DATASETS.TRAIN"
    names = cfg.DATASETS.TEST if eval_only else cfg.DATASETS.TRAIN
    used = [n for n in names if is_registered_folder(n)]
    if not used:
        return notes
    signatures = {n: get_panoptic_folder(n).categories for n in used}
    first = used[0]
    for n in used[1:]:
        if signatures[n] != signatures[first]:
            raise ValueError(
                f"{key} mixes '{first}' and '{n}', whose categories differ; the heads can only "
                "follow one category set: train/evaluate them separately or give them the same "
                "'categories'"
            )
    folder = get_panoptic_folder(first)
    n_things, n_stuff = len(folder.things), len(folder.stuff)
    wanted = {_ROI_KEY: max(1, n_things), _SEM_KEY: n_stuff + 1}
    if n_things == 0:
        wanted[_SCORE_KEY] = 1.0  # scores are <= 1 and must exceed it: no instance, ever
    for k, value in wanted.items():
        node, leaf = _node(cfg, k)
        if k in explicit:
            if node[leaf] != value and k != _SCORE_KEY:
                notes.append(f"{k}={node[leaf]} from the command line, although '{first}' has "
                             f"{n_things if k == _ROI_KEY else n_stuff + 1}")
            continue
        if node[leaf] != value:
            notes.append(f"{k}: {node[leaf]} -> {value} (categories of '{first}')")
        node[leaf] = value
    if n_things == 0:
        notes.append(f"'{first}' has no thing class: the ROI heads keep one placeholder class "
                     f"and {_SCORE_KEY}=1.0, so no instance is predicted")
    return notes


def prepare_cfg_folders(cfg: CfgNode, eval_only: bool = False) -> list[str]:
    """Derive now the files of the registered folders that DATASETS.TEST (and, unless
    ``eval_only``, DATASETS.TRAIN) name, so bad data fails at startup with our message.

    Safe in every DDP rank at once: the first derives, the others wait on the lock and find
    the cache fresh. Returns the names that were rebuilt.
    """
    names = [*([] if eval_only else cfg.DATASETS.TRAIN), *cfg.DATASETS.TEST]
    rebuilt = []
    for name in dict.fromkeys(n for n in names if is_registered_folder(n)
                              and n.endswith("_separated")):
        if prepare_panoptic_dataset(name):
            rebuilt.append(name)
    return rebuilt
