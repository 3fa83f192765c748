"""Look at a dataset as the model sees it: its panoptic ground truth drawn with the dataset's
names and colours, or the training samples after augmentation with the targets the model
learns from (instance masks and the stuff map side by side).

The logic behind tools/visualize_data.py. The drawing of a panoptic map (ground truth or
prediction, dataset category ids) lives here once; tools/analyze_results.py uses it too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import convert_image_to_rgb, read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image
from tqdm import tqdm

from ..data.metadata import VOID_LABEL
from ..evaluation.ground_truth import PanopticGroundTruth
from ..utils.io import atomic_write
from ..utils.paths import prepare_output_dir, refuse_replacing_inputs

__all__ = [
    "SOURCES",
    "draw_panoptic",
    "draw_training_sample",
    "fit",
    "hstack",
    "image_files_by_id",
    "panel_size",
    "save_png",
    "to_contiguous",
    "visualize_annotations",
    "visualize_dataloader",
    "visualize_dataset",
]

logger = logging.getLogger(__name__)

SOURCES = ("annotation", "dataloader")
GAP = 4  # pixels between the panels of one picture
GAP_COLOR = 255


def save_png(path: str, rgb: np.ndarray) -> None:
    """Write an RGB picture atomically (a reader never sees half a PNG)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG",
                                                                    optimize=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, buf.getvalue())


def hstack(panels: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Panels of equal height side by side, ``gap`` white pixels apart."""
    h = panels[0].shape[0]
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if i:
            parts.append(np.full((h, gap, 3), GAP_COLOR, np.uint8))
        parts.append(p.astype(np.uint8))
    return np.concatenate(parts, axis=1)


def panel_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) of one panel of a picture (worst cases, training samples): small images
    enlarged to a 256-px short side (labels stay readable), large ones shrunk to a 640-px
    long side."""
    short, long_ = min(height, width), max(height, width)
    scale = 256 / short if short < 256 else min(1.0, 640 / long_)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit(rgb: np.ndarray, h: int, w: int, nearest: bool = False) -> np.ndarray:
    """``rgb`` resized to (h, w) (nearest for label maps)."""
    if rgb.shape[:2] == (h, w):
        return rgb
    method = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize((w, h), method))


def to_contiguous(segments: Sequence[Mapping[str, Any]], metadata: Any,
                  categories: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Segments with dataset category ids -> contiguous ids + ``isthing``, as the Visualizer
    (and the model's output) name classes; the inverse of the evaluator's conversion."""
    things = metadata.thing_dataset_id_to_contiguous_id
    stuff = metadata.stuff_dataset_id_to_contiguous_id
    out = []
    for seg in segments:
        cat = int(seg["category_id"])
        isthing = bool(categories[cat]["isthing"]) if cat in categories else cat in things
        table = things if isthing else stuff
        if cat not in table:
            raise KeyError(f"category id {cat} (segment {seg.get('id')}) is not in the metadata "
                           f"of '{getattr(metadata, 'name', '?')}'")
        entry = {"id": int(seg["id"]), "category_id": int(table[cat]), "isthing": isthing,
                 "iscrowd": int(seg.get("iscrowd", 0))}
        if "score" in seg:
            entry["score"] = float(seg["score"])
        out.append(entry)
    return out


def draw_panoptic(image: np.ndarray, ids: np.ndarray, segments: Sequence[Mapping[str, Any]],
                  metadata: Any, categories: Mapping[int, Mapping[str, Any]],
                  scale: float = 1.0) -> np.ndarray:
    """An id map with dataset category ids drawn over ``image`` (RGB) by the Visualizer, with
    the dataset's names and colours; returns RGB at ``scale`` times the image size."""
    listed = {int(s["id"]) for s in segments}
    ids = np.where(np.isin(ids, list(listed)), ids, -1).astype(np.int64)  # unlisted: void
    vis = Visualizer(image, metadata, scale=scale)
    out = vis.draw_panoptic_seg(torch.from_numpy(ids), to_contiguous(segments, metadata,
                                                                      categories))
    return out.get_image()


def image_files_by_id(dataset: str) -> dict[Any, str]:
    """image_id -> image path of a registered dataset (its dataset dicts)."""
    return {d["image_id"]: d["file_name"] for d in DatasetCatalog.get(dataset)}


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def visualize_annotations(dataset: str, output: str, num: int | None = None,
                          progress: bool = True) -> list[str]:
    """``output/<image stem>.png``: each image's panoptic ground truth at the image's own size.

    Reads the panoptic JSON and PNGs named by the metadata (builtin, synthetic and own
    datasets alike), so what is drawn is what the evaluator scores against."""
    gt = PanopticGroundTruth(dataset, purpose="drawing the ground truth")
    meta = MetadataCatalog.get(dataset)
    files = image_files_by_id(dataset)
    image_ids = [i for i in gt.image_ids if i in files][:num]
    paths = {i: os.path.join(output, _stem(files[i]) + ".png") for i in image_ids}
    prepare_output_dir(output)
    gt_files = [os.path.join(gt.root, gt.annotation({"image_id": i})["file_name"])
                for i in image_ids]
    refuse_replacing_inputs(paths.values(), [*files.values(), *gt_files])  # PNG images, GT
    written = []
    for image_id in tqdm(image_ids, desc="annotations", unit="img", disable=not progress):
        ann = gt.annotation({"image_id": image_id})
        image = read_image(files[image_id], format="RGB")
        ids = gt.read(ann)
        picture = draw_panoptic(image, ids, ann["segments_info"], meta, gt.categories)
        path = paths[image_id]
        save_png(path, picture)
        written.append(path)
    return written


def draw_training_sample(sample: Mapping[str, Any], metadata: Any, input_format: str = "BGR"
                         ) -> np.ndarray:
    """One mapped training sample: [image with its instance masks, boxes and classes |
    image with the stuff map (255 = ignored, shown bare)], each ``panel_size`` of the
    augmented image: (ph, 2 pw + GAP) in all."""
    image = convert_image_to_rgb(sample["image"].permute(1, 2, 0).numpy(), input_format)
    ph, pw = panel_size(*image.shape[:2])
    scale = ph / image.shape[0]
    left = Visualizer(image, metadata, scale=scale)
    inst = sample.get("instances")
    if inst is not None and len(inst):
        gm = inst.gt_masks if inst.has("gt_masks") else None
        masks = None if gm is None else (gm.polygons if hasattr(gm, "polygons")
                                         else gm.tensor.numpy())
        classes = inst.gt_classes.tolist()
        names = [metadata.thing_classes[c] for c in classes]
        colors = [np.asarray(metadata.thing_colors[c]) / 255 for c in classes] \
            if getattr(metadata, "thing_colors", None) else None
        left.overlay_instances(masks=masks, boxes=inst.gt_boxes.tensor.numpy(), labels=names,
                               assigned_colors=colors)
    panels = [fit(left.output.get_image(), ph, pw)]
    if "sem_seg" in sample:
        right = Visualizer(image, metadata, scale=scale)
        sem = sample["sem_seg"].numpy().astype(np.int64)
        sem = np.where(sem == VOID_LABEL, len(metadata.stuff_classes), sem)  # not drawn
        right.draw_sem_seg(sem)
        panels.append(fit(right.output.get_image(), ph, pw))
    return hstack(panels)


def _samples(cfg: CfgNode) -> Iterator[dict]:
    from ..engine.trainer import Trainer  # the trainer's own loader: same augmentation

    for batch in Trainer.build_train_loader(cfg):
        yield from batch


def visualize_dataloader(cfg: CfgNode, output: str, num: int = 8, progress: bool = True
                         ) -> list[str]:
    """``output/<image stem>_<k>.png``: the first ``num`` samples the trainer's loader yields
    for ``DATASETS.TRAIN`` (augmented), with the separated targets side by side."""
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    written = []
    bar = tqdm(total=num, desc="dataloader", unit="img", disable=not progress)
    for k, sample in enumerate(_samples(cfg)):
        if k >= num:
            break
        picture = draw_training_sample(sample, meta, cfg.INPUT.FORMAT)
        path = os.path.join(output, f"{_stem(sample['file_name'])}_{k:03d}.png")
        save_png(path, picture)
        written.append(path)
        bar.update()
    bar.close()
    return written


def visualize_dataset(cfg: CfgNode, source: str, output: str, dataset: str | None = None,
                      num: int | None = None, progress: bool = True) -> list[str]:
    """What tools/visualize_data.py does: ``annotation`` draws ``dataset`` (default
    ``DATASETS.TRAIN[0]``), ``dataloader`` the training samples; returns the files written."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    if source == "dataloader":
        if dataset is not None:
            raise ValueError("--source dataloader draws DATASETS.TRAIN; set it rather than "
                             "--dataset-name")
        prepare_output_dir(output)  # before the loader starts
        return visualize_dataloader(cfg, output, 8 if num is None else num, progress)
    from ..engine.defaults import panoptic_metadata

    name = panoptic_metadata(cfg, dataset, key="--dataset-name" if dataset else "DATASETS.TRAIN"
                             ).name
    return visualize_annotations(name, output, num, progress)
