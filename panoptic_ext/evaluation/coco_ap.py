"""Box and mask AP with pycocotools' numbers at Rust speed: Detectron2's ``COCOEvaluator``
with hotcoco's ``COCOeval``.

Detectron2's fast C++ ``COCOeval_opt`` is not built in the sal-detectron2 wheel, so the stock
``COCOEvaluator`` runs pure-Python pycocotools, by far the slowest part of an evaluation.
hotcoco (``pip install hotcoco``) reimplements pycocotools' matching and accumulation; its
results are pycocotools' bit for bit once one difference is removed: its ``load_res`` gives a
mask result without a box the box's area (pycocotools: the mask's), which moves detections
between the small/medium/large ranges. Here mask results get pycocotools' areas back before
the evaluation (tests compare every AP with pycocotools').

Everything else (category mapping, ``coco_instances_results.json``, per-category AP tables,
result keys) is Detectron2's: only the COCOeval construction and run are replaced. Keypoints,
a custom ``max_dets_per_image`` and a missing hotcoco go Detectron2's own way.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

__all__ = ["AP_BACKENDS", "FastCOCOEvaluator", "check_ap_backend", "hotcoco_cocoeval",
           "instances_to_results"]

logger = logging.getLogger(__name__)

AP_BACKENDS = ("auto", "hotcoco", "pycocotools")
_DEFAULT_MAX_DETS = [1, 10, 100]


def check_ap_backend(value: str, key: str = "TEST.AP_BACKEND") -> str:
    """The backend name, or a ValueError naming ``key`` and the allowed values."""
    if value not in AP_BACKENDS:
        raise ValueError(f"{key}={value!r}; expected one of {list(AP_BACKENDS)}")
    return value


def _hotcoco():
    try:
        import hotcoco
    except ImportError:
        return None
    return hotcoco


def hotcoco_cocoeval(
    coco_gt: Any, results: Sequence[dict], iou_type: str, img_ids: Sequence[int] | None = None,
    max_dets: Sequence[int] = (1, 10, 100),
) -> Any:
    """Run hotcoco's COCOeval (evaluate, accumulate, summarize) as pycocotools would.

    ``coco_gt`` is a hotcoco ``COCO`` (or a pycocotools one / a dataset dict, converted);
    ``results`` are COCO result dicts (not modified). Returns the evaluator, whose ``stats``
    and ``eval["precision"]`` Detectron2's result derivation reads.
    """
    hotcoco = _hotcoco()
    if hotcoco is None:
        raise ImportError("AP backend 'hotcoco' needs the hotcoco package (pip install hotcoco)")
    if not isinstance(coco_gt, hotcoco.COCO):
        coco_gt = hotcoco.COCO(getattr(coco_gt, "dataset", coco_gt))
    if iou_type == "segm":  # as Detectron2: the mask's area, not the box's, sets the range
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    coco_dt = coco_gt.load_res(list(results))  # reads the dicts (copied into Rust), no edits
    if iou_type == "segm" and results:
        anns = coco_dt.dataset["annotations"]
        areas = mask_util.area([a["segmentation"] for a in anns])
        coco_dt.update_anns(ids=[a["id"] for a in anns], area=[float(v) for v in areas])
    ev = hotcoco.COCOeval(coco_gt, coco_dt, iou_type)
    ev.params.maxDets = list(max_dets)
    if img_ids is not None:
        ev.params.imgIds = list(img_ids)
    ev.evaluate()
    ev.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.summarize()
    logger.info("\n" + out.getvalue().rstrip())
    return ev


def instances_to_results(instances: Any, image_id: Any) -> list[dict]:
    """COCO result dicts of an image's ``Instances`` (boxes, scores, classes, masks), equal to
    Detectron2's ``instances_to_coco_json`` but with one RLE-encoding call for all masks."""
    n = len(instances)
    if n == 0:
        return []
    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS,
                            BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    results = [{"image_id": image_id, "category_id": classes[k], "bbox": boxes[k],
                "score": scores[k]} for k in range(n)]
    if instances.has("pred_masks"):
        masks = instances.pred_masks.numpy().astype(np.uint8)  # (N, H, W)
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for result, rle in zip(results, rles, strict=True):
            rle["counts"] = rle["counts"].decode("utf-8")
            result["segmentation"] = rle
    return results


class FastCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` (same arguments, results and files) whose box and mask AP come from
    hotcoco when ``backend`` allows: "auto" (hotcoco if installed), "hotcoco" (required),
    "pycocotools" (Detectron2's own path)."""

    def __init__(self, dataset_name: str, *args: Any, backend: str = "auto", **kwargs: Any):
        super().__init__(dataset_name, *args, **kwargs)
        self._dataset_name = dataset_name
        check_ap_backend(backend, "backend")
        if backend == "hotcoco" and _hotcoco() is None:
            raise ImportError("AP backend 'hotcoco' needs the hotcoco package (pip install "
                              "hotcoco), or use TEST.AP_BACKEND 'auto'/'pycocotools'")
        self._backend = backend
        self._hotcoco_gt = None

    @property
    def uses_hotcoco(self) -> bool:
        """Whether box/mask AP run through hotcoco for this evaluator's settings."""
        return (self._backend != "pycocotools" and _hotcoco() is not None
                and getattr(self, "_do_evaluation", False)
                and list(self._max_dets_per_image) == _DEFAULT_MAX_DETS
                and self._integer_image_ids())

    def _integer_image_ids(self) -> bool:
        """hotcoco takes integer image ids only; Cityscapes' are strings ("frankfurt_..."),
        so such datasets go pycocotools' way (same numbers, slower)."""
        if getattr(self, "_int_ids", None) is None:
            images = self._coco_api.dataset.get("images", [])
            self._int_ids = all(isinstance(im.get("id"), int) and not isinstance(
                im.get("id"), bool) and im["id"] >= 0 for im in images)
            if not self._int_ids:
                if self._backend == "hotcoco":
                    raise ValueError(
                        f"TEST.AP_BACKEND 'hotcoco' needs integer image ids, but dataset "
                        f"'{self._dataset_name}' has others (e.g. {images[0].get('id')!r}); "
                        "use 'auto' or 'pycocotools'")
                logger.info(f"{self._dataset_name}: image ids are not integers; box/mask AP "
                            "through pycocotools")
        return self._int_ids

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]) -> None:
        """Detectron2's, with every mask of an image RLE-encoded in one call (same RLEs)."""
        for inp, out in zip(inputs, outputs, strict=True):
            prediction: dict[str, Any] = {"image_id": inp["image_id"]}
            if "instances" in out:
                instances = out["instances"].to(self._cpu_device)
                prediction["instances"] = (
                    instances_to_coco_json(instances, inp["image_id"])
                    if instances.has("pred_keypoints")
                    else instances_to_results(instances, inp["image_id"]))
            if "proposals" in out:
                prediction["proposals"] = out["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def _to_dataset_ids(self, results: list[dict]) -> None:
        """Contiguous model class ids -> the dataset's category ids, in place."""
        mapping = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if not mapping:
            return
        reverse = {v: k for k, v in mapping.items()}
        for r in results:
            if r["category_id"] not in reverse:
                raise ValueError(
                    f"A prediction for image {r.get('image_id')} has class {r['category_id']}, "
                    f"but dataset '{self._dataset_name}' has {len(reverse)} thing classes "
                    f"(0..{len(reverse) - 1}); is MODEL.ROI_HEADS.NUM_CLASSES right?")
            r["category_id"] = reverse[r["category_id"]]

    def _eval_predictions(self, predictions: list[dict], img_ids: Any = None) -> None:
        results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = set(self._tasks or self._tasks_from_predictions(results))
        if not self.uses_hotcoco or not tasks <= {"bbox", "segm"}:
            super()._eval_predictions(predictions, img_ids)
            return
        self._to_dataset_ids(results)
        if self._output_dir:  # the file Detectron2 writes, for tools that read it
            path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info(f"Saving results to {path}")
            with PathManager.open(path, "w") as f:
                json.dump(results, f)
        logger.info("Evaluating predictions with hotcoco's COCOeval (pycocotools' numbers) ...")
        if self._hotcoco_gt is None:
            self._hotcoco_gt = _hotcoco().COCO(self._coco_api.dataset)
        for task in sorted(tasks):
            coco_eval = (hotcoco_cocoeval(self._hotcoco_gt, results, task, img_ids=img_ids,
                                          max_dets=self._max_dets_per_image)
                         if results else None)
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes"))
