"""TorchScript export of PanopticFPNExt, with a runner that needs neither Detectron2 nor us.

The network (backbone, RPN, ROI heads, semantic head) is traced through
``model.inference(..., do_postprocess=False)``; its data-dependent post-processing (resizing
boxes, pasting the kept masks, the semantic argmax and the panoptic merge) is a scripted
function the trace calls, so its loops stay loops. The scripted steps are the eager ones op for
op (each mask pasted alone on its box region, as Detectron2 does on CPU; the same argsort,
thresholds and id order as ``combine_panoptic``), so the panoptic output is the eager model's.

Loading the result needs only ``torch`` and ``torchvision`` (for its ``nms``/``roi_align``
ops): see ``run_exported_template.py``, copied next to the model as ``run_exported.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import build_model
from torch import Tensor, nn

__all__ = [
    "EXPORT_FILES",
    "ExportReport",
    "PanopticExportModule",
    "compare_with_eager",
    "export_torchscript",
    "panoptic_from_raw",
    "preprocess_like_predictor",
]

logger = logging.getLogger(__name__)

EXPORT_FILES = {"model": "model.ts", "info": "export_info.json", "runner": "run_exported.py"}
_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_exported_template.py")


# ---- scripted post-processing (TorchScript: keep to its subset of Python) --------------------


def _paste_one(mask: Tensor, box: Tensor, img_h: int, img_w: int) -> tuple[int, int, Tensor]:
    """One (1, 1, M, M) mask probability pasted on the region around its (1, 4) box, as
    Detectron2's ``_do_paste_mask(skip_empty=True)`` computes it for a single box, then
    thresholded. Returns (y0, x0, bool crop)."""
    x0_int = int(torch.clamp(box[0, 0].floor() - 1, min=0))
    y0_int = int(torch.clamp(box[0, 1].floor() - 1, min=0))
    x1_int = int(torch.clamp(box[0, 2].ceil() + 1, max=img_w))
    y1_int = int(torch.clamp(box[0, 3].ceil() + 1, max=img_h))
    x0, y0, x1, y1 = torch.split(box, 1, dim=1)
    img_y = torch.arange(y0_int, y1_int, dtype=torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)
    pasted = F.grid_sample(mask.float(), grid, align_corners=False)
    return y0_int, x0_int, pasted[0, 0] >= 0.5  # detector_postprocess's mask threshold


def _semantic_labels(sem_full: Tensor, in_h: int, in_w: int, out_h: int, out_w: int) -> Tensor:
    """Argmax of the semantic logits at the output size (``sem_seg_postprocess``'s resize)."""
    sem = sem_full[0, :, :in_h, :in_w]
    if out_h != in_h or out_w != in_w:
        sem = F.interpolate(
            sem.expand(1, -1, -1, -1), size=(out_h, out_w), mode="bilinear", align_corners=False
        )[0]
    return sem.argmax(dim=0)


@torch.jit.script
def panoptic_from_raw(
    image: Tensor,
    out_size: Tensor,
    boxes: Tensor,
    scores: Tensor,
    classes: Tensor,
    mask_probs: Tensor,
    sem_full: Tensor,
    overlap_thresh: float,
    stuff_area_thresh: float,
    score_thresh: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Panoptic result from the raw network outputs of one image, as the eager model gives it.

    Returns (panoptic (H, W) int32, and per segment: ids int32, contiguous category ids int64,
    isthing bool, scores float32 (-1 for stuff), instance indices int64 (-1 for stuff), pixel
    areas int64). Segments are in the eager order: things by score, then stuff by label.
    """
    in_h, in_w = image.shape[-2], image.shape[-1]
    out_h, out_w = int(out_size[0]), int(out_size[1])
    # detector_postprocess: rescale, clip to the output size, drop empty boxes
    boxes = boxes.clone()
    boxes[:, 0::2] *= float(out_w) / float(in_w)
    boxes[:, 1::2] *= float(out_h) / float(in_h)
    boxes = torch.stack(
        [
            boxes[:, 0].clamp(min=0, max=out_w),
            boxes[:, 1].clamp(min=0, max=out_h),
            boxes[:, 2].clamp(min=0, max=out_w),
            boxes[:, 3].clamp(min=0, max=out_h),
        ],
        dim=-1,
    )
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0.0) & ((boxes[:, 3] - boxes[:, 1]) > 0.0)
    boxes, scores, classes, mask_probs = boxes[keep], scores[keep], classes[keep], mask_probs[keep]

    # things: decreasing score, above the threshold, each takes its free pixels
    panoptic = torch.zeros((out_h, out_w), dtype=torch.int32)
    order = torch.argsort(-scores)
    order = order[scores[order] >= score_thresh]
    seg_ids: list[int] = []
    seg_cats: list[int] = []
    seg_inst: list[int] = []
    n_things = 0
    next_id = 1
    for k in range(order.numel()):
        inst = int(order[k])
        y0, x0, m = _paste_one(mask_probs[inst : inst + 1], boxes[inst : inst + 1], out_h, out_w)
        region = panoptic[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]
        hit = m & (region != 0)
        area = int(m.sum())
        overlap = int(hit.sum())
        if area == 0 or float(overlap) / float(area) > overlap_thresh:
            continue
        region.masked_fill_(m & ~hit, next_id)
        seg_ids.append(next_id)
        seg_cats.append(int(classes[inst]))
        seg_inst.append(inst)
        n_things += 1
        next_id += 1

    # stuff: each label > 0 in increasing order gets its free pixels unless too few
    labels = _semantic_labels(sem_full, in_h, in_w, out_h, out_w)
    free = panoptic == 0
    size = int(labels.max()) + 1 if labels.numel() > 0 else 1
    counts = torch.bincount((labels * 2 + free.long()).flatten(), minlength=2 * size)
    counts = counts.view(size, 2)
    lut = torch.zeros(size, dtype=torch.int32)
    for label in range(1, size):
        if int(counts[label].sum()) == 0:
            continue
        if int(counts[label, 1]) < stuff_area_thresh:
            continue
        lut[label] = next_id
        seg_ids.append(next_id)
        seg_cats.append(label)
        seg_inst.append(-1)
        next_id += 1
    if len(seg_ids) > n_things:
        panoptic = torch.where(free, lut[labels], panoptic)

    ids = torch.tensor(seg_ids, dtype=torch.int32)
    n = len(seg_ids)
    isthing = torch.arange(n) < n_things
    inst_t = torch.tensor(seg_inst, dtype=torch.int64)
    seg_scores = torch.full([n], -1.0, dtype=torch.float32)
    if n_things > 0:
        seg_scores[:n_things] = scores[inst_t[:n_things]]
    areas = torch.bincount(panoptic.flatten().long(), minlength=next_id)[ids.long()]
    cats = torch.tensor(seg_cats, dtype=torch.int64)
    return panoptic, ids, cats, isthing, seg_scores, inst_t, areas


# ---- the traced wrapper ------------------------------------------------------------------


class PanopticExportModule(nn.Module):
    """What gets traced: (image (3, H, W) already resized, out_size [height, width]) ->
    ``panoptic_from_raw``'s tensors. The merge thresholds are the model's, fixed at export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        combine = model.combine
        try:
            self.thresholds = (
                float(combine.overlap_thresh),
                float(combine.stuff_area_thresh),
                float(combine.score_thresh),
            )
        except AttributeError as e:
            raise TypeError(
                f"export supports the heuristic merge (HeuristicCombine); {type(combine).__name__}"
                " lacks overlap_thresh/stuff_area_thresh/score_thresh"
            ) from e

    def forward(self, image: Tensor, out_size: Tensor) -> tuple[Tensor, ...]:
        image = image.to(torch.float32)
        detections, sem_full = self.model.inference([{"image": image}], do_postprocess=False)
        det = detections[0]
        overlap, area, score = self.thresholds
        return panoptic_from_raw(
            image,
            out_size,
            det.pred_boxes.tensor,
            det.scores,
            det.pred_classes,
            det.pred_masks,
            sem_full,
            overlap,
            area,
            score,
        )


# ---- export ------------------------------------------------------------------------------


def preprocess_like_predictor(cfg: CfgNode, image_bgr: np.ndarray) -> tuple[Tensor, Tensor]:
    """The (3, H, W) float tensor and [height, width] that ``DefaultPredictor`` feeds the model."""
    image = image_bgr[:, :, ::-1] if cfg.INPUT.FORMAT == "RGB" else image_bgr
    h, w = image.shape[:2]
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    resized = aug.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized).astype("float32").transpose(2, 0, 1))
    return tensor, torch.tensor([h, w], dtype=torch.int64)


def _sample_image(cfg: CfgNode, sample_image: str | None) -> str:
    if sample_image:
        if not os.path.isfile(sample_image):
            raise FileNotFoundError(f"--sample-image {sample_image!r} does not exist")
        return sample_image
    if len(cfg.DATASETS.TEST):
        dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])
        if dicts:
            return dicts[0]["file_name"]
    raise ValueError("no sample image to trace with: pass --sample-image IMG")


def _export_info(cfg: CfgNode, module: PanopticExportModule) -> dict[str, Any]:
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
    meta = MetadataCatalog.get(name)
    thing_ids = dict(getattr(meta, "thing_dataset_id_to_contiguous_id", {}) or {})
    stuff_ids = dict(getattr(meta, "stuff_dataset_id_to_contiguous_id", {}) or {})
    things = [{"contiguous_id": c, "id": int(d), "name": _name(meta, "thing_classes", c)}
              for d, c in sorted(thing_ids.items(), key=lambda kv: kv[1])]
    stuff = [{"contiguous_id": c, "id": int(d), "name": _name(meta, "stuff_classes", c)}
             for d, c in sorted(stuff_ids.items(), key=lambda kv: kv[1])]
    overlap, area, score = module.thresholds
    return {
        "format_version": 1,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "dataset": name,
        "weights": cfg.MODEL.WEIGHTS,
        "combine": {"OVERLAP_THRESH": overlap, "STUFF_AREA_LIMIT": area,
                    "INSTANCES_CONFIDENCE_THRESH": score},
        "things": things,
        "stuff": stuff,
    }


def _name(meta, key: str, index: int) -> str:
    names = getattr(meta, key, None) or []
    return names[index] if index < len(names) else str(index)


@dataclass
class ExportReport:
    """Where the files went and how the traced model compared with the eager one."""

    output_dir: str
    sample_image: str
    input_size: tuple[int, int]
    num_segments: int
    num_detections: int
    identical: bool
    pixel_agreement: float


def _eager_panoptic(model: nn.Module, image: Tensor, out_size: Tensor):
    h, w = (int(v) for v in out_size)
    with torch.no_grad():
        out = model([{"image": image, "height": h, "width": w}])[0]
    return out["panoptic_seg"]


def compare_with_eager(
    model: nn.Module, traced: torch.jit.ScriptModule, image: Tensor, out_size: Tensor
) -> tuple[bool, float, int]:
    """(identical ids and segments, fraction of equal pixels, segment count) of the traced
    module's panoptic output against the eager model's on one input."""
    pan_e, segs_e = _eager_panoptic(model, image, out_size)
    with torch.no_grad():
        pan_t, ids, cats, isthing, scores, inst, areas = traced(image, out_size)
    agreement = float((pan_e.cpu().to(torch.int32) == pan_t).float().mean())
    segs_t = []
    for i in range(len(ids)):
        seg = {"id": int(ids[i]), "isthing": bool(isthing[i]), "category_id": int(cats[i])}
        if seg["isthing"]:
            seg.update(score=float(scores[i]), instance_id=int(inst[i]))
        else:
            seg["area"] = int(areas[i])
        segs_t.append(seg)
    keys = ("id", "isthing", "category_id", "score", "instance_id", "area")
    segs_e = [{k: s[k] for k in keys if k in s} for s in segs_e]
    same = agreement == 1.0 and segs_e == segs_t
    return same, agreement, len(segs_t)


def export_torchscript(
    cfg: CfgNode, output_dir: str, sample_image: str | None = None
) -> ExportReport:
    """Trace the model of `cfg` (weights MODEL.WEIGHTS) into `output_dir`/model.ts, write
    export_info.json and run_exported.py, and check the traced panoptic output against the
    eager model's on the sample image (default: the first image of DATASETS.TEST[0])."""
    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.DEVICE != "cpu" or cfg.TEST.PRECISION.lower() != "fp32":
        logger.info("Exporting on CPU in fp32 (the traced graph fixes device and dtype)")
    cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.PRECISION = "fp32"
    cfg.freeze()
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    module = PanopticExportModule(model).eval()

    path = _sample_image(cfg, sample_image)
    image, out_size = preprocess_like_predictor(cfg, read_image(path, format="BGR"))
    with torch.no_grad():
        num_det = len(model.inference([{"image": image}], do_postprocess=False)[0][0])
    if num_det == 0:
        logger.warning(f"{path} gives no detection: the instance branch is traced on an empty "
                       "set; trace with an image that has detections (--sample-image)")
    with torch.no_grad(), patch_builtin_len(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values in Detectron2
        traced = torch.jit.trace(module, (image, out_size), check_trace=False)

    os.makedirs(output_dir, exist_ok=True)
    traced.save(os.path.join(output_dir, EXPORT_FILES["model"]))
    info = _export_info(cfg, module)
    with open(os.path.join(output_dir, EXPORT_FILES["info"]), "w") as f:
        json.dump(info, f, indent=2)
    runner = os.path.join(output_dir, EXPORT_FILES["runner"])
    shutil.copyfile(_TEMPLATE, runner)
    os.chmod(runner, 0o755)

    loaded = torch.jit.load(os.path.join(output_dir, EXPORT_FILES["model"]))
    same, agreement, num_segments = compare_with_eager(model, loaded, image, out_size)
    return ExportReport(
        output_dir=output_dir,
        sample_image=path,
        input_size=(int(image.shape[1]), int(image.shape[2])),
        num_segments=num_segments,
        num_detections=num_det,
        identical=same,
        pixel_agreement=agreement,
    )
