"""Cityscapes panoptic for Panoptic FPN: category metadata, registration and preparation.

Detectron2 registers ``cityscapes_fine_panoptic_{train,val}`` in the form Panoptic-DeepLab
reads (one contiguous space of 19 classes). Panoptic FPN trains on the "separated" form
(instance annotations + stuff maps), registered here at import, under
``$DETECTRON2_DATASETS`` (default ``./datasets``), as ``cityscapes_fine_panoptic_{train,val}
_separated``; Detectron2's names are left alone (registered here only where it lacks them).

Files (see datasets/README.md)::

    cityscapes/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png   downloaded
    cityscapes/gtFine/<split>/<city>/..._gtFine_{instanceIds,labelIds}.png          downloaded
    cityscapes/gtFine/cityscapes_panoptic_<split>.json + cityscapes_panoptic_<split>/  made by
        cityscapesScripts' createPanopticImgs (also what Detectron2's own names read)
    cityscapes/gtFine/cityscapes_panoptic_<split>_panoptic_ext/cityscapes_panoptic_<split>/
        instances.json, panoptic_stuff/   derived by panoptic_ext.data.custom (as for any folder)

:func:`prepare_cityscapes_panoptic` (``datasets/prepare_cityscapes_panoptic.py``) makes the
last two. cityscapesScripts' output quirks are handled when loading: image ids are strings
(``<city>_<seq>_<frame>``) and its image names (``..._gtFine_leftImg8bit.png``, no city folder)
are not the files' names (``<city>/..._leftImg8bit.png``). The ``cityscapesscripts`` package
is imported only by the preparation, so the rest works without it.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from tqdm import tqdm

from ..formats import PanopticFormatError
from ..utils.io import atomic_write_json, read_json_or_none
from ..utils.pools import safe_pool
from .builtin import unregister_dataset
from .custom.categories import normalize_categories
from .custom.derive import prepare_panoptic_dataset
from .custom.folder import PanopticFolder, remember_folder
from .custom.register import load_separated_dicts, load_standard_dicts
from .metadata import default_datasets_root, panoptic_separated_metadata, panoptic_standard_metadata

__all__ = [
    "CITYSCAPES_CATEGORIES",
    "CITYSCAPES_DATASET_NAMES",
    "CITYSCAPES_SPLITS",
    "cityscapes_image_file",
    "cityscapes_split_paths",
    "prepare_cityscapes_panoptic",
    "register_cityscapes_panoptic",
]

logger = logging.getLogger(__name__)

CITYSCAPES_SPLITS: tuple[str, ...] = ("train", "val")
CITYSCAPES_DATASET_NAMES: tuple[str, ...] = tuple(
    f"cityscapes_fine_panoptic_{s}_separated" for s in CITYSCAPES_SPLITS)

# The 19 evaluated classes of cityscapesScripts' labels.py (label id, name, its 'category' as
# supercategory, colour; ignoreInEval classes left out, as its panoptic conversion does), in
# label-id order, which is also the trainId order: 11 stuff (trainId 0-10) then 8 things
# (11-18). The same entries as the conversion's JSON; checked in tests/data/test_cityscapes.py.
CITYSCAPES_CATEGORIES: tuple[dict[str, Any], ...] = tuple(
    {"id": cid, "name": name, "isthing": isthing, "color": color, "supercategory": sup}
    for cid, name, isthing, sup, color in (
        (7, "road", 0, "flat", [128, 64, 128]),
        (8, "sidewalk", 0, "flat", [244, 35, 232]),
        (11, "building", 0, "construction", [70, 70, 70]),
        (12, "wall", 0, "construction", [102, 102, 156]),
        (13, "fence", 0, "construction", [190, 153, 153]),
        (17, "pole", 0, "object", [153, 153, 153]),
        (19, "traffic light", 0, "object", [250, 170, 30]),
        (20, "traffic sign", 0, "object", [220, 220, 0]),
        (21, "vegetation", 0, "nature", [107, 142, 35]),
        (22, "terrain", 0, "nature", [152, 251, 152]),
        (23, "sky", 0, "sky", [70, 130, 180]),
        (24, "person", 1, "human", [220, 20, 60]),
        (25, "rider", 1, "human", [255, 0, 0]),
        (26, "car", 1, "vehicle", [0, 0, 142]),
        (27, "truck", 1, "vehicle", [0, 0, 70]),
        (28, "bus", 1, "vehicle", [0, 60, 100]),
        (31, "train", 1, "vehicle", [0, 80, 100]),
        (32, "motorcycle", 1, "vehicle", [0, 0, 230]),
        (33, "bicycle", 1, "vehicle", [119, 11, 32]),
    )
)

_PACKAGE_HINT = (
    "Preparing Cityscapes needs the 'cityscapesscripts' package (its createPanopticImgs does "
    "the panoptic conversion): pip install cityscapesscripts==2.3.0 (pinned in requirements.txt)"
)
_CHUNK = 16  # instanceIds files per conversion task: fine-grained progress, little overhead


def cityscapes_split_paths(root: str | os.PathLike, split: str) -> dict[str, str]:
    """Every path of one split under the datasets root (nothing is created)."""
    base = os.path.join(os.fspath(root), "cityscapes")
    gt = os.path.join(base, "gtFine")
    stem = f"cityscapes_panoptic_{split}"
    panoptic_root = os.path.join(gt, stem)
    derived = os.path.join(f"{panoptic_root}_panoptic_ext", stem)  # custom.derive's convention
    return {
        "image_root": os.path.join(base, "leftImg8bit", split),
        "gt_dir": os.path.join(gt, split),
        "panoptic_json": os.path.join(gt, f"{stem}.json"),
        "panoptic_root": panoptic_root,
        "derived": derived,
        "instances_json": os.path.join(derived, "instances.json"),
        "sem_seg_root": os.path.join(derived, "panoptic_stuff"),
    }


def cityscapes_image_file(image_root: str, image_id: str) -> str:
    """The image of ``<city>_<seq>_<frame>``: ``image_root/<city>/<id>_leftImg8bit.png``.

    cityscapesScripts' JSON names it ``<id>_gtFine_leftImg8bit.png`` without the city folder,
    which is no file of the download, so the name is rebuilt from the id.
    """
    image_id = str(image_id)
    city = image_id.rsplit("_", 2)[0]
    return os.path.join(image_root, city, f"{image_id}_leftImg8bit.png")


def _folder(name: str, paths: dict[str, str]) -> PanopticFolder:
    return PanopticFolder(name, paths["image_root"], paths["panoptic_json"],
                          paths["panoptic_root"], paths["derived"],
                          normalize_categories([dict(c) for c in CITYSCAPES_CATEGORIES],
                                               "panoptic_ext.data.cityscapes"))


def _hint(root: str) -> str:
    return (f"Create it with `python datasets/prepare_cityscapes_panoptic.py --root {root}` "
            "(see datasets/README.md, Cityscapes), or set DETECTRON2_DATASETS to the folder "
            "holding cityscapes/ and call panoptic_ext.data.register_cityscapes_panoptic().")


def _load(loader: Callable[[PanopticFolder], list[dict]], folder: PanopticFolder,
          needed: Sequence[str], hint: str) -> list[dict]:
    """The folder's dicts, with the image paths of the download (see module docstring)."""
    missing = [p for p in needed if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"Dataset '{folder.name}' needs {', '.join(missing)}, which does not exist. {hint}")
    os.makedirs(folder.cache, exist_ok=True)
    remember_folder(folder.name, folder)  # the derivation looks the folder up by name
    dicts = loader(folder)
    for d in dicts:
        d["file_name"] = cityscapes_image_file(folder.image_root, d["image_id"])
    return dicts


def register_cityscapes_panoptic(root: str | os.PathLike | None = None) -> list[str]:
    """(Re-)register ``cityscapes_fine_panoptic_{train,val}_separated`` under ``root``
    (default ``$DETECTRON2_DATASETS``, else ``./datasets``), and the standard names where
    Detectron2 has not registered them. Lazy: nothing is read until ``DatasetCatalog.get``.
    Returns the names registered."""
    root = os.fspath(default_datasets_root() if root is None else root)
    hint = _hint(root)
    names = []
    for split in CITYSCAPES_SPLITS:
        paths = cityscapes_split_paths(root, split)
        common = {"image_root": paths["image_root"], "panoptic_root": paths["panoptic_root"],
                  "panoptic_json": paths["panoptic_json"], "gt_dir": paths["gt_dir"],
                  "evaluator_type": "coco_panoptic_seg", "ignore_label": 255,
                  "label_divisor": 1000,
                  "cityscapes_eval": True,  # + Cityscapes' own AP and mIoU (evaluation.cityscapes)
                  "prepare_hint": hint}  # how to create missing files (validation errors)
        plain = f"cityscapes_fine_panoptic_{split}"
        if plain not in DatasetCatalog.list():  # Detectron2's own (Panoptic-DeepLab) wins
            folder = _folder(plain, paths)
            DatasetCatalog.register(plain, functools.partial(
                _load, load_standard_dicts, folder, [paths["panoptic_json"], paths["image_root"]],
                hint))
            MetadataCatalog.get(plain).set(**common,
                                           **panoptic_standard_metadata(CITYSCAPES_CATEGORIES))
            names.append(plain)
        name = f"{plain}_separated"
        unregister_dataset(name)
        folder = _folder(name, paths)
        if os.path.isdir(paths["derived"]):
            # Prepared: the config step sizes the heads from its categories and refreshes the
            # derived files at startup. Unprepared, loading names the preparation script.
            remember_folder(name, folder)
        DatasetCatalog.register(name, functools.partial(
            _load, load_separated_dicts, folder,
            [paths["panoptic_json"], paths["panoptic_root"], paths["image_root"]], hint))
        MetadataCatalog.get(name).set(
            **common, **panoptic_separated_metadata(CITYSCAPES_CATEGORIES),
            sem_seg_root=paths["sem_seg_root"], json_file=paths["instances_json"],
            mask_format="bitmask")  # the derived instance masks are RLE
        names.append(name)
    logger.debug("Registered %s under %s", names, root)
    return names


# ---------------------------------------------------------------- preparation


def _first_unreadable(files: Sequence[str]) -> str | None:
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
        except Exception:  # noqa: BLE001 - any decoding failure names the file
            return f
    return None


def _convert_chunk(task: tuple[str, list[str], str, str]) -> dict[str, Any]:
    """Worker: cityscapesScripts' ``convert2panoptic`` on a few files (linked into a private
    tree it can glob), its PNGs moved into the panoptic folder; returns its JSON."""
    split, files, scratch, panoptic_root = task
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    work = tempfile.mkdtemp(prefix="chunk-", dir=scratch)
    try:
        src = os.path.join(work, "gtFine", split, "chunk")
        os.makedirs(src)
        for f in files:
            os.symlink(os.path.abspath(f), os.path.join(src, os.path.basename(f)))
        out = os.path.join(work, "out")
        os.makedirs(out)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                convert2panoptic(cityscapesPath=os.path.join(work, "gtFine"),
                                 outputFolder=out, useTrainId=False, setNames=[split])
        except (Exception, SystemExit) as exc:
            bad = _first_unreadable(files)
            where = bad or f"one of {', '.join(files)}"
            raise PanopticFormatError(
                f"{where}: cityscapesScripts could not convert it ({type(exc).__name__}: "
                f"{exc}); the file is unreadable or not a Cityscapes instanceIds PNG, restore "
                "it from the gtFine download") from None
        stem = f"cityscapes_panoptic_{split}"
        with open(os.path.join(out, f"{stem}.json")) as fh:
            data = json.load(fh)
        for ann in data["annotations"]:
            os.replace(os.path.join(out, stem, ann["file_name"]),
                       os.path.join(panoptic_root, ann["file_name"]))
        return data
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _image_id(instance_png: str) -> str:
    return os.path.basename(instance_png).replace("_gtFine_instanceIds.png", "")


def _check_images(image_root: str, sources: Sequence[str], limit: int = 5) -> None:
    """Every gtFine frame needs its leftImg8bit image: a dataset listing images that do not
    exist would fail later, in training or evaluation, far from the cause."""
    missing = [(f, p) for f in sources
               if not os.path.isfile(p := cityscapes_image_file(image_root, _image_id(f)))]
    if missing:
        shown = "; ".join(f"{p} (for {f})" for f, p in missing[:limit])
        more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
        raise FileNotFoundError(
            f"{len(missing)} gtFine frame(s) have no image: {shown}{more}. Unpack "
            "leftImg8bit_trainvaltest.zip into cityscapes/ again (see datasets/README.md)")


def _convert_split(split: str, paths: dict[str, str], workers: int, force: bool,
                   progress: bool) -> tuple[int, int]:
    """Run the panoptic conversion on the stale files of a split; (converted, up to date)."""
    sources = sorted(glob.glob(os.path.join(paths["gt_dir"], "*", "*_gtFine_instanceIds.png")))
    if not sources:
        raise FileNotFoundError(
            f"{paths['gt_dir']} has no <city>/*_gtFine_instanceIds.png; unpack "
            "gtFine_trainvaltest.zip into cityscapes/ (see datasets/README.md)")
    _check_images(paths["image_root"], sources)
    panoptic_root = paths["panoptic_root"]
    os.makedirs(panoptic_root, exist_ok=True)
    old = read_json_or_none(paths["panoptic_json"]) if not force else None
    old_images, old_anns, categories = {}, {}, None
    if isinstance(old, dict) and {"images", "annotations", "categories"} <= set(old):
        old_images = {i["id"]: i for i in old["images"]}
        old_anns = {a["image_id"]: a for a in old["annotations"]}
        categories = old["categories"]
    stale = []
    for f in sources:
        iid = _image_id(f)
        out = os.path.join(panoptic_root, os.path.basename(f).replace("_instanceIds.png",
                                                                      "_panoptic.png"))
        fresh = (iid in old_images and iid in old_anns and os.path.isfile(out)
                 and os.path.getmtime(out) >= os.path.getmtime(f))
        if not fresh:
            stale.append(f)
    if not stale and set(old_images) == {_image_id(f) for f in sources}:
        return 0, len(sources)
    scratch = tempfile.mkdtemp(prefix=".convert-", dir=os.path.dirname(panoptic_root))
    tasks = [(split, stale[i:i + _CHUNK], scratch, panoptic_root)
             for i in range(0, len(stale), _CHUNK)]
    new_images, new_anns = {}, {}
    bar = tqdm(total=len(stale), desc=f"cityscapes {split}: panoptic PNGs", unit="img",
               disable=not progress)
    try:
        with bar:
            if workers == 1 or len(tasks) == 1:
                results = map(_convert_chunk, tasks)
                pool = None
            else:
                # never a fork: the caller may already run OpenCV/torch threads
                pool = safe_pool(min(workers, len(tasks)), preload=(__name__,))
                results = pool.imap_unordered(_convert_chunk, tasks)
            try:
                for data in results:
                    new_images.update({i["id"]: i for i in data["images"]})
                    new_anns.update({a["image_id"]: a for a in data["annotations"]})
                    categories = data["categories"]
                    bar.update(len(data["images"]))
            finally:
                if pool is not None:
                    pool.terminate()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ids = [_image_id(f) for f in sources]
    images = {**old_images, **new_images}
    anns = {**old_anns, **new_anns}
    atomic_write_json(paths["panoptic_json"], {
        "images": [images[i] for i in ids],
        "annotations": [anns[i] for i in ids],
        "categories": categories,
    })
    return len(stale), len(sources) - len(stale)


def prepare_cityscapes_panoptic(
    root: str | os.PathLike | None = None,
    splits: Sequence[str] = CITYSCAPES_SPLITS,
    workers: int | None = None,
    force: bool = False,
    progress: bool | None = None,
) -> dict[str, dict[str, Any]]:
    """Build what Panoptic FPN needs from the Cityscapes download, for each split found.

    1. cityscapesScripts' panoptic conversion (COCO panoptic JSON + PNGs, the files Detectron2's
       own Cityscapes panoptic names read), in parallel on the files that changed;
    2. the instance JSON and stuff PNGs, derived by :mod:`panoptic_ext.data.custom`.

    Returns ``{split: {"converted", "up_to_date", "derived"}}`` for the splits done and
    ``{split: {"missing": [paths]}}`` for those absent. A split with images but no gtFine (or
    the reverse) is an error naming the missing folder; an unreadable file stops the run
    naming it.
    """
    try:
        import cityscapesscripts.preparation.createPanopticImgs  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{_PACKAGE_HINT} ({exc})") from exc
    root = os.fspath(default_datasets_root() if root is None else root)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if progress is None:
        progress = sys.stderr.isatty()
    report: dict[str, dict[str, Any]] = {}
    for split in splits:
        paths = cityscapes_split_paths(root, split)
        present = {k: os.path.isdir(paths[k]) for k in ("image_root", "gt_dir")}
        if not any(present.values()):
            report[split] = {"missing": [paths["image_root"], paths["gt_dir"]]}
            logger.warning("Cityscapes split '%s' not found (no %s, no %s); skipped", split,
                           paths["image_root"], paths["gt_dir"])
            continue
        if not all(present.values()):
            lacking = paths["gt_dir"] if present["image_root"] else paths["image_root"]
            raise FileNotFoundError(
                f"Cityscapes split '{split}': {lacking} does not exist while the other half of "
                "the split does; unpack both leftImg8bit_trainvaltest.zip and "
                "gtFine_trainvaltest.zip into cityscapes/ (see datasets/README.md)")
        converted, up_to_date = _convert_split(split, paths, workers, force, progress)
        folder = _folder(f"cityscapes_fine_panoptic_{split}_separated", paths)
        # A key of its own: the registered name may point at another root.
        key = f"{folder.name} (preparing {os.path.abspath(root)})"
        remember_folder(key, folder)
        os.makedirs(folder.cache, exist_ok=True)
        derived = prepare_panoptic_dataset(key, workers=workers, progress=progress)
        report[split] = {"converted": converted, "up_to_date": up_to_date, "derived": derived}
        logger.debug("Cityscapes %s: %d converted, %d up to date; instances and stuff PNGs %s",
                    split, converted, up_to_date, "rebuilt" if derived else "up to date")
    return report


register_cityscapes_panoptic()
