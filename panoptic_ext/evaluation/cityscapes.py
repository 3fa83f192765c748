"""Cityscapes' own metrics for a Panoptic FPN model: instance AP and 19-class pixel mIoU,
computed by cityscapesScripts (``cityscapesscripts`` package) as its benchmark does.

Detectron2 has ``CityscapesInstanceEvaluator`` and ``CityscapesSemSegEvaluator``; they do
not fit here, so these two are written for this project:

* Detectron2's semantic evaluator reads ``sem_seg`` as 19 train-id logits, while Panoptic
  FPN's semantic head predicts the 11 stuff classes plus one merged "things" class. Here the
  19-class label map is the panoptic output (each segment painted with its class), which is
  the model's full semantic answer.
* Their results (``segm``, ``sem_seg``) would collide with the COCO and mIoU evaluators' keys
  in one ``DatasetEvaluators``; here they are ``cityscapes_instance_seg`` and
  ``cityscapes_sem_seg``.
* They write into a system temporary folder and cityscapesScripts writes ``matches.json``
  into the current directory; here everything goes under the evaluator's ``output_dir``
  (removed after each evaluation) and the script's global ``args`` are set programmatically
  (no ``CITYSCAPES_DATASET`` needed). Its ``sys.exit`` on bad input becomes an exception.
* Class ids come from the metadata's dataset-id maps (Cityscapes label ids for the datasets
  of :mod:`panoptic_ext.data.cityscapes`), not from class names.

The metadata needs ``gt_dir`` (``cityscapes/gtFine/<split>``, holding ``<city>/*_gtFine_
{instanceIds,labelIds}.png``) and the ``*_dataset_id_to_contiguous_id`` maps. Both evaluators
work on one machine or with ``output_dir`` on a file system all ranks share, and must be
called from all ranks (they synchronize).
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image
from tqdm import tqdm

from ..data.metadata import contiguous_to_dataset_ids
from ..utils.pools import safe_pool

__all__ = [
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "cityscapes_evaluators",
    "cityscapes_image_id",
]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install cityscapesscripts==2.3.0 (pinned in requirements.txt)"
_UNLABELED = 0  # cityscapesScripts' "unlabeled" id (ignoreInEval): what void pixels predict


def cityscapes_image_id(file_name: str) -> str:
    """``<city>_<seq>_<frame>`` of a Cityscapes image or annotation file name."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    for suffix in ("_leftImg8bit", "_gtFine_instanceIds", "_gtFine_labelIds"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


@contextlib.contextmanager
def _cityscapes_scripts(what: str) -> Iterator[None]:
    """Run cityscapesScripts quietly; its ``printError`` (print + ``sys.exit``) becomes an
    error carrying the message."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    except SystemExit:
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        raise RuntimeError(f"cityscapesScripts' {what} stopped: "
                           f"{lines[-1] if lines else 'no message'}") from None
    except (OSError, ValueError, KeyError, IndexError) as exc:  # e.g. a malformed file
        raise RuntimeError(f"cityscapesScripts' {what} failed: {type(exc).__name__}: "
                           f"{exc}") from exc
    finally:
        if out.getvalue().strip():
            logger.debug("cityscapesScripts (%s) printed:\n%s", what, out.getvalue())


class _CityscapesEvaluator(DatasetEvaluator):
    """Writes per-image prediction files into a work folder that all ranks share, then has
    cityscapesScripts score them on the main process."""

    _kind = ""  # work folder suffix and log name
    _gt_suffix = ""  # ground truth files: gt_dir/<city>/*<suffix>
    _script = ""  # the cityscapesscripts.evaluation module that scores
    _pred_suffix = ""  # prediction files: work/<image id><suffix>
    _metric = ""  # what the logs call the result
    _result_key = ""  # results under "cityscapes_<key>"
    _output = ""  # the model output that predictions are written from

    def __init__(self, dataset_name: str, output_dir: str | None = None) -> None:
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        gt_dir = getattr(self._metadata, "gt_dir", None)
        if not gt_dir:
            raise KeyError(
                f"Metadata of dataset '{dataset_name}' has no 'gt_dir'; Cityscapes "
                "evaluation needs it to point at cityscapes/gtFine/<split> (registered by "
                "panoptic_ext.data.cityscapes)")
        self._gt_dir = gt_dir
        self._things, self._stuff = contiguous_to_dataset_ids(self._metadata, dataset_name)
        self._output_dir = output_dir
        self._work: str | None = None

    def reset(self) -> None:
        """A fresh, empty work folder, the same on every rank."""
        if self._output_dir:
            work = os.path.join(self._output_dir, f"cityscapes_{self._kind}_eval")
            if comm.is_main_process():
                shutil.rmtree(work, ignore_errors=True)
                os.makedirs(work)
        else:
            work = tempfile.mkdtemp(prefix=f"cityscapes_{self._kind}_") \
                if comm.is_main_process() else ""
        self._work = comm.all_gather(work)[0]  # rank 0's folder; also a barrier after rmtree

    def _gt_files(self) -> list[str]:
        files = sorted(glob.glob(os.path.join(self._gt_dir, "*", f"*{self._gt_suffix}")))
        if not files:
            raise FileNotFoundError(
                f"Dataset '{self._dataset_name}': no <city>/*{self._gt_suffix} under gt_dir "
                f"{self._gt_dir}; unpack gtFine_trainvaltest.zip there (datasets/README.md)")
        return files

    def _pairs(self, pred_suffix: str) -> tuple[list[str], list[str]]:
        """(predictions, ground truths) for the images that got a prediction."""
        gts = self._gt_files()
        preds = {f[: -len(pred_suffix)]: os.path.join(self._work, f)
                 for f in os.listdir(self._work) if f.endswith(pred_suffix)}
        pairs = [(preds[cityscapes_image_id(g)], g) for g in gts
                 if cityscapes_image_id(g) in preds]
        missing = len(gts) - len(pairs)
        if missing:
            logger.warning(f"{missing} of {len(gts)} ground truth images under {self._gt_dir} "
                           f"got no prediction; Cityscapes {self._kind} metrics cover the "
                           f"{len(pairs)} evaluated images.")
        return [p for p, _ in pairs], [g for _, g in pairs]

    def _outputs(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping]
                 ) -> Iterator[tuple[str, Any]]:
        """(Cityscapes image id, the model's ``_output``) of each image; a model that does not
        return that output is misconfigured, so this says which setting keeps it."""
        for inp, out in zip(inputs, outputs, strict=True):
            if self._output not in out:
                raise KeyError(
                    f"Cityscapes {self._metric} needs the model's '{self._output}' output; keep "
                    "it in MODEL.PANOPTIC_EXT.INFERENCE_OUTPUTS")
            yield cityscapes_image_id(inp["file_name"]), out[self._output]

    def _finish(self) -> None:
        """Remove the prediction files (main process, after scoring)."""
        if self._work:
            shutil.rmtree(self._work, ignore_errors=True)

    def _import(self, module: str) -> Any:
        try:
            return __import__(f"cityscapesscripts.evaluation.{module}", fromlist=["args"])
        except ImportError as exc:
            raise ImportError(f"Cityscapes {self._kind} evaluation needs the "
                              f"'cityscapesscripts' package: {_INSTALL_HINT} ({exc})") from exc

    def evaluate(self) -> OrderedDict | None:
        """Score the written predictions with cityscapesScripts on the main process; the
        prediction files are removed afterwards, whatever happens."""
        comm.synchronize()
        if not comm.is_main_process():
            return None
        try:
            cs = self._import(self._script)
            preds, gts = self._pairs(self._pred_suffix)
            if not gts:
                logger.warning(f"No predictions to score for Cityscapes {self._metric}.")
                return OrderedDict()
            args = cs.args  # the script's settings; the rest keep its defaults
            args.predictionPath = os.path.abspath(self._work)
            args.quiet = True
            start = time.perf_counter()
            logger.info(f"Cityscapes {self._metric} on {len(gts)} images ({self._dataset_name})")
            res = self._score(cs, args, preds, gts)
        finally:
            self._finish()
        logger.info(f"Cityscapes {self._summary(res)} ({time.perf_counter() - start:.1f} s)")
        return OrderedDict({f"cityscapes_{self._result_key}": res})

    def _score(self, cs: Any, args: Any, preds: list[str], gts: list[str]) -> dict[str, float]:
        """The script `cs` run on the (prediction, ground truth) lists: the results dict."""
        raise NotImplementedError

    def _summary(self, res: dict[str, float]) -> str:
        """The headline numbers of `res`, for the log."""
        raise NotImplementedError


_MATCH_ARGS = ("predictionPath", "instLabels", "quiet")  # what the matching reads of args
_IMAGES_PER_WORKER = 16  # fewer images are matched in this process (no worker start-up)


def _match_image(task: tuple[dict[str, Any], str, str]) -> dict:
    """cityscapesScripts' ground truth instances and matching of one image (worker-safe: the
    script's settings travel with the task)."""
    settings, pred, gt = task
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as cs

    for key, value in settings.items():
        setattr(cs.args, key, value)
    with _cityscapes_scripts(f"instance matching of {pred}"):
        return cs.matchGtWithPreds([pred], [gt], cs.instances2dict([gt], False), cs.args)


def _match_images(settings: dict[str, Any], preds: list[str], gts: list[str]) -> dict:
    """All images' matches; in worker processes when there are many (the matching is pure
    Python and NumPy over full-resolution masks, about a second per image)."""
    tasks = [(settings, p, g) for p, g in zip(preds, gts, strict=True)]
    workers = min(os.cpu_count() or 1, 8, len(tasks) // _IMAGES_PER_WORKER)
    bar = tqdm(total=len(tasks), desc="cityscapes AP", unit="img",
               disable=not sys.stderr.isatty())
    matches: dict = {}
    with bar:
        if workers < 2:
            results = map(_match_image, tasks)
            pool = None
        else:
            # never a fork: the trainer's process may already run OpenCV/torch threads
            pool = safe_pool(workers, preload=(__name__,))
            results = pool.imap_unordered(_match_image, tasks, chunksize=4)
        try:
            for m in results:
                matches.update(m)
                bar.update()
        finally:
            if pool is not None:
                pool.terminate()
    return matches


class CityscapesInstanceEvaluator(_CityscapesEvaluator):
    """Cityscapes instance-level AP (AP over IoU 0.5:0.95 and AP50, per class too) of the
    model's ``instances``: one PNG per predicted mask and a text file per image, in the
    format of cityscapesScripts' ``evalInstanceLevelSemanticLabeling``."""

    _kind = "instance"
    _gt_suffix = "_gtFine_instanceIds.png"
    _script = "evalInstanceLevelSemanticLabeling"
    _pred_suffix = "_pred.txt"
    _metric = "instance AP"
    _result_key = "instance_seg"
    _output = "instances"

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping]) -> None:
        for image_id, instances in self._outputs(inputs, outputs):
            inst = instances.to("cpu")
            classes = inst.pred_classes.tolist()
            scores = inst.scores.tolist()
            masks = inst.pred_masks.numpy() if len(inst) else []
            lines = []
            for i, (cls, score) in enumerate(zip(classes, scores, strict=True)):
                if not masks[i].any():
                    continue  # cityscapesScripts skips empty masks anyway
                try:
                    label_id = self._things[int(cls)]
                except KeyError:
                    raise KeyError(
                        f"Image {image_id}: predicted thing class {cls} is not in the "
                        f"thing_dataset_id_to_contiguous_id of '{self._dataset_name}'") from None
                name = f"{image_id}_{i}.png"
                Image.fromarray(masks[i].astype(bool)).save(os.path.join(self._work, name))
                lines.append(f"{name} {label_id} {score:.6f}\n")
            with open(os.path.join(self._work, f"{image_id}_pred.txt"), "w") as f:
                f.writelines(lines)  # an image without instances still needs its file

    def _score(self, cs: Any, args: Any, preds: list[str], gts: list[str]) -> dict[str, float]:
        args.distanceAvailable = False
        with _cityscapes_scripts("instance evaluation"):
            # evaluateImgLists' steps, image by image in parallel, without its gtInstances and
            # matches JSON files (the latter in the current directory)
            cs.setInstanceLabels(args)
            settings = {k: getattr(args, k) for k in _MATCH_ARGS}
            matches = _match_images(settings, preds, gts)
            averages = cs.computeAverages(cs.evaluateMatches(matches, args), args)
        res: dict[str, float] = {"AP": 100 * float(averages["allAp"]),
                                 "AP50": 100 * float(averages["allAp50%"])}
        for name, r in averages["classes"].items():
            if not np.isnan(r["ap"]):  # NaN: no ground truth and no prediction of the class
                res[f"AP/{name}"] = 100 * float(r["ap"])
                res[f"AP50/{name}"] = 100 * float(r["ap50%"])
        return res

    def _summary(self, res: dict[str, float]) -> str:
        return f"instance AP {res['AP']:.2f}, AP50 {res['AP50']:.2f}"


class CityscapesSemSegEvaluator(_CityscapesEvaluator):
    """Cityscapes pixel-level IoU over its 19 classes (mIoU, iIoU, per category and class) of
    the model's ``panoptic_seg``, painted as a Cityscapes label-id map (void pixels become
    "unlabeled": wrong wherever the ground truth is an evaluated class)."""

    _kind = "semantic"
    _gt_suffix = "_gtFine_labelIds.png"
    _script = "evalPixelLevelSemanticLabeling"
    _pred_suffix = "_pred.png"
    _metric = "mIoU"
    _result_key = "sem_seg"
    _output = "panoptic_seg"

    def _label_map(self, panoptic_seg: Any, image_id: str) -> np.ndarray:
        panoptic, segments = panoptic_seg
        if segments is None:
            raise ValueError(
                f"Image {image_id}: Cityscapes mIoU needs panoptic_seg with segments_info "
                "(Panoptic FPN's output), got None")
        ids = panoptic.cpu().numpy() if hasattr(panoptic, "cpu") else np.asarray(panoptic)
        lut = np.full(int(ids.max(initial=0)) + 1, _UNLABELED, dtype=np.uint8)
        for seg in segments:
            table = self._things if seg["isthing"] else self._stuff
            try:
                label = table[int(seg["category_id"])]
            except KeyError:
                raise KeyError(
                    f"Image {image_id}: segment {seg.get('id')} has "
                    f"{'thing' if seg['isthing'] else 'stuff'} class {seg['category_id']}, "
                    f"unknown to the metadata of '{self._dataset_name}'") from None
            if 0 <= seg["id"] < lut.size:
                lut[seg["id"]] = label
        return lut[np.clip(ids, 0, lut.size - 1)]

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping]) -> None:
        for image_id, panoptic_seg in self._outputs(inputs, outputs):
            label = self._label_map(panoptic_seg, image_id)
            Image.fromarray(label).save(os.path.join(self._work, f"{image_id}_pred.png"))

    def _score(self, cs: Any, args: Any, preds: list[str], gts: list[str]) -> dict[str, float]:
        args.predictionWalk = None
        args.exportFile = os.path.join(args.predictionPath, "result.json")
        args.JSONOutput = False
        args.colorized = False
        args.evalInstLevelScore = True
        args.evalPixelAccuracy = False
        args.normalized = True
        with _cityscapes_scripts("pixel-level evaluation"):
            r = cs.evaluateImgLists(preds, gts, args)
        res: dict[str, float] = {
            "mIoU": 100 * float(r["averageScoreClasses"]),
            "iIoU": 100 * float(r["averageScoreInstClasses"]),
            "mIoU_category": 100 * float(r["averageScoreCategories"]),
            "iIoU_category": 100 * float(r["averageScoreInstCategories"]),
        }
        for name, score in r["classScores"].items():
            if not np.isnan(score):  # NaN: ignored in evaluation, or absent from both
                res[f"IoU/{name}"] = 100 * float(score)
        return res

    def _summary(self, res: dict[str, float]) -> str:
        return f"mIoU {res['mIoU']:.2f}"


def cityscapes_evaluators(dataset_name: str, output_dir: str | None = None
                          ) -> list[DatasetEvaluator]:
    """Cityscapes' instance AP and mIoU evaluators for a dataset; none, with a warning, when
    cityscapesScripts is not installed (PQ and the COCO metrics do not need it)."""
    try:
        import cityscapesscripts.evaluation  # noqa: F401
    except ImportError:
        logger.warning(f"Skipping Cityscapes' own AP and mIoU on '{dataset_name}': the "
                       f"'cityscapesscripts' package is missing; {_INSTALL_HINT}")
        return []
    return [CityscapesInstanceEvaluator(dataset_name, output_dir),
            CityscapesSemSegEvaluator(dataset_name, output_dir)]
