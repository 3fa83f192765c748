"""The one config setup every tool calls.

A config passes through the same steps wherever it is used (training, ``--eval-only``, demo,
merge tuning, export, benchmarks): our keys added, the YAML and ``KEY VALUE`` overrides
merged, the datasets of ``DATASETS.PANOPTIC_FOLDERS`` / ``--dataset`` registered and the heads
sized to their categories. So a ``config.yaml`` that one run wrote works with every other tool.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_panoptic_config
from ..data.custom import configure_panoptic_folders, prepare_cfg_folders
from ..data.loader import train_dataset_dicts  # the dicts the training loader uses
from ..data.validate import unknown_dataset_message
from ..utils.io import atomic_write
from .schedule import check_epoch_keys, resolve_epochs, saved_resolution

__all__ = ["panoptic_metadata", "setup", "setup_cfg"]

logger = logging.getLogger(__name__)

# What a tool needs of a dataset's metadata to name and colour the model's classes and to map
# its contiguous ids back to the dataset's.
_METADATA_KEYS = ("thing_classes", "stuff_classes", "thing_dataset_id_to_contiguous_id",
                  "stuff_dataset_id_to_contiguous_id")


def setup_cfg(
    config_file: str | None | argparse.Namespace,
    opts: Sequence[str] = (),
    *,
    datasets: Sequence[str] = (),
    eval_only: bool = False,
    freeze: bool = True,
) -> CfgNode:
    """Config from a YAML and ``KEY VALUE`` overrides, with our keys and datasets registered.

    ``datasets`` are ``NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT`` specs (``--dataset``),
    appended to ``DATASETS.PANOPTIC_FOLDERS``; the heads follow the categories of the datasets
    of ``DATASETS.TRAIN`` (``DATASETS.TEST`` with ``eval_only``) unless ``opts`` set them.
    Given a tool's parsed arguments instead of a file, it is :func:`setup` (old callers).
    """
    if isinstance(config_file, argparse.Namespace):
        return setup(config_file)
    cfg, notes = _build_cfg(config_file, opts, datasets, eval_only)
    _log_notes(notes)
    if freeze:
        cfg.freeze()
    return cfg


def _build_cfg(config_file: str | None, opts: Sequence[str], datasets: Sequence[str],
               eval_only: bool) -> tuple[CfgNode, list[str]]:
    cfg = add_panoptic_config(get_cfg())
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"--config-file {config_file!r} does not exist")
        cfg.merge_from_file(config_file)
    yaml_max_iter = cfg.SOLVER.MAX_ITER  # what SOLVER.STEPS are a fraction of
    opts = list(opts or ())
    if len(opts) % 2:
        raise ValueError(f"config overrides come in KEY VALUE pairs, got {opts}")
    cfg.merge_from_list(opts)
    notes = check_epoch_keys(cfg, yaml_max_iter)
    return cfg, notes + configure_panoptic_folders(cfg, datasets, opts, eval_only)


def _log_notes(notes: Sequence[str]) -> None:
    """What the datasets changed in the config; a command-line value that disagrees warns."""
    for note in notes:
        (logger.warning if "command line" in note else logger.info)(note)


def setup(args: argparse.Namespace) -> CfgNode:
    """``tools/train_net.py``'s setup: :func:`setup_cfg` from the parsed arguments, then
    Detectron2's ``default_setup`` (output folder, ``config.yaml``, logging, seed) and the
    derivation of our datasets' files, so bad data fails at startup with our message.
    For training, a schedule in epochs is converted to iterations here and ``config.yaml``
    rewritten with them (:mod:`.schedule`)."""
    eval_only = bool(getattr(args, "eval_only", False))
    cfg, notes = _build_cfg(args.config_file, args.opts or (),
                            getattr(args, "dataset", None) or (), eval_only)
    cfg.freeze()
    # Before default_setup replaces it: the image count a resumed run's epochs were over.
    resume = bool(getattr(args, "resume", False)) and not eval_only
    saved_images = saved_resolution(cfg.OUTPUT_DIR) if resume and cfg.SOLVER.EPOCHS else None
    if comm.get_world_size() > 1:  # every rank has read it before rank 0 rewrites it
        saved_images = comm.all_gather(saved_images)[0]
    default_setup(cfg, args)
    # default_setup configures only detectron2's and fvcore's loggers; ours says what it did.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="panoptic_ext")
    _log_notes(notes)
    prepare_cfg_folders(cfg, eval_only)
    if not eval_only:
        cfg = _resolve_schedule(cfg, saved_images)
    return cfg


def _resolve_schedule(cfg: CfgNode, saved_images: int | None) -> CfgNode:
    """Epochs -> iterations, once; a resumed run keeps the image count it started with, so
    its schedule stays the uninterrupted run's. ``config.yaml`` then holds the iterations."""
    if cfg.SOLVER.EPOCHS == 0 or (cfg.SOLVER.EPOCHS_RESOLVED and cfg.SOLVER.MAX_ITER):
        return resolve_epochs(cfg)  # nothing to convert; a resolved config is checked
    images = len(train_dataset_dicts(cfg))
    if saved_images is not None and saved_images != images:
        logger.warning(
            f"--resume: the training set now has {images} images after filtering, the run "
            f"started with {saved_images}; keeping its schedule (epochs of {saved_images} "
            "images) so the resumed run continues it. Start a new OUTPUT_DIR to convert anew")
        images = saved_images
    cfg = resolve_epochs(cfg, images=images)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
        atomic_write(path, cfg.dump())
        logger.info(f"Schedule in iterations saved to {path}")
    return cfg


def panoptic_metadata(cfg: CfgNode, dataset: str | None = None, key: str = "DATASETS.TEST"
                      ) -> Any:
    """Metadata of ``dataset`` (default: the first of ``key``), checked to name the model's
    classes and map them to dataset ids.

    Tools that show or write predictions (demo, export, tuning) need it; an unregistered
    dataset or one without class lists is an error naming the key, never a silent fallback
    to contiguous ids.
    """
    if dataset is None:
        names = list(cfg.DATASETS[key.split(".")[-1]])
        if not names:
            raise ValueError(
                f"{key} is empty: set it to the dataset whose categories the model predicts "
                f"(e.g. {key} \"('coco_2017_val_panoptic_separated',)\"), or register your "
                "folder with --dataset / DATASETS.PANOPTIC_FOLDERS"
            )
        dataset = names[0]
    if dataset not in DatasetCatalog:
        raise KeyError(unknown_dataset_message(dataset, key))
    meta = MetadataCatalog.get(dataset)
    missing = [k for k in _METADATA_KEYS if not getattr(meta, k, None)]
    if missing:
        raise KeyError(
            f"Dataset '{dataset}' ({key}) has no {', '.join(missing)} in its metadata: its "
            "categories are unknown, so predictions could not be named or mapped to dataset "
            "ids. Register it with COCO panoptic metadata (--dataset / "
            "DATASETS.PANOPTIC_FOLDERS for your own folder)."
        )
    return meta
