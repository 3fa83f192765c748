"""Where a trained model goes wrong: per-image PQ, the worst images drawn with an error map,
PQ/SQ/RQ per category, and one HTML page that shows them.

The logic behind tools/analyze_results.py. Predictions come from the evaluator itself
(``PanopticEvaluator(save_panoptic=True)`` while the model runs) or from a folder it wrote
before (``TEST.SAVE_PREDICTIONS``: ``predictions.json`` + ``predictions/``), so there is one
conversion of the model's output to COCO panoptic files, and the per-image numbers are
``image_pq_stats`` against the ground truth the evaluator reads: summed over the images they
give exactly the evaluator's PQ.

The error map classifies segments by panopticapi's matching rules (IoU > 0.5 within a
category; crowd and void regions excused), adding one distinction PQ does not make: an
unmatched prediction that would match an unmatched ground truth segment but for its class is
a *wrong class* (PQ counts it as one FP plus one FN).
"""

from __future__ import annotations

import csv
import html
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from ..evaluation.ground_truth import PanopticGroundTruth
from ..evaluation.pq import PQStats, image_pq_stats, summarize_pq
from ..formats import OFFSET, check_unique_ids, load_panoptic_json, read_panoptic_png
from ..utils.io import atomic_write
from ..utils.locks import run_lock
from ..utils.paths import join_inside, prepare_output_dir
from .visualize import GAP, draw_panoptic, fit, hstack, image_files_by_id, panel_size, save_png

__all__ = [
    "CORRECT",
    "ERROR_COLORS",
    "ERROR_NAMES",
    "FALSE_NEGATIVE",
    "FALSE_POSITIVE",
    "WRONG_CLASS",
    "AnalysisResult",
    "ImageErrors",
    "ImageResult",
    "analyze_predictions",
    "analyze_results",
    "error_map",
    "panel_size",
    "render_error_map",
    "run_model_predictions",
    "worst_case_picture",
    "write_index_html",
    "write_per_class_chart",
    "write_per_image_csv",
]

logger = logging.getLogger(__name__)

# Error-map labels (uint8) and their colours; 0 is void / excused (shown as the grey image).
CORRECT, FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_CLASS = 1, 2, 3, 4
ERROR_NAMES = {CORRECT: "correct (TP)", FALSE_POSITIVE: "false positive",
               FALSE_NEGATIVE: "false negative (missed)", WRONG_CLASS: "wrong class"}
ERROR_COLORS = {CORRECT: (60, 180, 75), FALSE_POSITIVE: (255, 200, 0),
                FALSE_NEGATIVE: (230, 25, 35), WRONG_CLASS: (170, 40, 255)}
TITLE_H = 44  # pixels of the title strip of a worst-case picture (title, panel names)
LEGEND_H = 26  # pixels of its legend strip
PANEL_TITLES = ("image", "ground truth", "prediction", "errors")
CSV_FIELDS = ("image", "image_id", "PQ", "SQ", "RQ", "TP", "FP", "FN")


# ---- per image -------------------------------------------------------------------------


@dataclass
class ImageErrors:
    """Segment classification of one image and the map it paints (labels above)."""

    labels: np.ndarray  # (H, W) uint8
    tp: list[tuple[int, int]] = field(default_factory=list)  # (gt id, pred id)
    fp: list[int] = field(default_factory=list)  # pred ids
    fn: list[int] = field(default_factory=list)  # gt ids
    wrong_class: list[tuple[int, int]] = field(default_factory=list)  # (gt id, pred id)


def error_map(gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]],
              pred_ids: np.ndarray, pred_segments: Sequence[Mapping[str, Any]]) -> ImageErrors:
    """Classify every segment as PQ's matching does and paint it: TP and FP on the
    prediction's pixels, FN on the ground truth's, wrong class on both (last, on top)."""
    gt_ids = np.asarray(gt_ids).astype(np.int64)
    pred_ids = np.asarray(pred_ids).astype(np.int64)
    gt = {int(s["id"]): s for s in gt_segments}
    pred = {int(s["id"]): s for s in pred_segments}
    keys, counts = np.unique(gt_ids * OFFSET + pred_ids, return_counts=True)
    inter: dict[tuple[int, int], int] = {}
    pred_area: dict[int, int] = {}
    gt_pixels: dict[int, int] = {}
    for key, n in zip(keys.tolist(), counts.tolist(), strict=True):
        g, p = divmod(key, OFFSET)
        inter[(g, p)] = n
        pred_area[p] = pred_area.get(p, 0) + n
        gt_pixels[g] = gt_pixels.get(g, 0) + n
    gt_void = 0 not in gt  # id 0 is void unless a segment claims it

    def iou(g: int, p: int) -> float:
        i = inter.get((g, p), 0)
        if not i:
            return 0.0
        void = inter.get((0, p), 0) if gt_void else 0
        area_g = gt[g].get("area", gt_pixels.get(g, 0))
        return i / (pred_area[p] + area_g - i - void)

    pairs = sorted((g, p) for (g, p) in inter if g in gt and p in pred)
    out = ImageErrors(labels=np.zeros(gt_ids.shape, np.uint8))
    matched_g: set[int] = set()
    matched_p: set[int] = set()
    for g, p in pairs:
        if (not gt[g].get("iscrowd", 0) and gt[g]["category_id"] == pred[p]["category_id"]
                and iou(g, p) > 0.5):
            out.tp.append((g, p))
            matched_g.add(g)
            matched_p.add(p)
    for g, p in pairs:
        if (g not in matched_g and p not in matched_p and not gt[g].get("iscrowd", 0)
                and gt[g]["category_id"] != pred[p]["category_id"] and iou(g, p) > 0.5):
            out.wrong_class.append((g, p))
            matched_g.add(g)
            matched_p.add(p)
    out.fn = [g for g, s in gt.items() if g not in matched_g and not s.get("iscrowd", 0)]
    crowd = {s["category_id"]: g for g, s in gt.items() if s.get("iscrowd", 0)}
    for p, s in pred.items():
        if p in matched_p or p not in pred_area:
            continue
        excused = (inter.get((0, p), 0) if gt_void else 0)
        if s["category_id"] in crowd:
            excused += inter.get((crowd[s["category_id"]], p), 0)
        if not excused / pred_area[p] > 0.5:
            out.fp.append(p)
    lab = out.labels
    lab[np.isin(pred_ids, [p for _, p in out.tp])] = CORRECT
    lab[np.isin(pred_ids, out.fp)] = FALSE_POSITIVE
    lab[np.isin(gt_ids, out.fn)] = FALSE_NEGATIVE
    lab[np.isin(pred_ids, [p for _, p in out.wrong_class])
        | np.isin(gt_ids, [g for g, _ in out.wrong_class])] = WRONG_CLASS
    return out


def render_error_map(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Errors in their solid legend colours over a dimmed grey copy of the image (RGB);
    correct segments only tinted, so the errors stand out."""
    grey = np.repeat(image.astype(np.float32).mean(axis=2, keepdims=True) * 0.5 + 40, 3, axis=2)
    ok = labels == CORRECT
    grey[ok] = 0.5 * grey[ok] + 0.5 * np.asarray(ERROR_COLORS[CORRECT], np.float32)
    out = grey.astype(np.uint8)
    for label in (FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_CLASS):
        out[labels == label] = ERROR_COLORS[label]
    return out


@dataclass
class ImageResult:
    """One image's PQ (%, over the categories present in it; 100 with no segment at all)
    and PQ statistics."""

    image_id: Any
    image_file: str
    prediction_file: str
    stats: PQStats
    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int

    @property
    def name(self) -> str:
        return os.path.basename(self.image_file)


@dataclass
class AnalysisResult:
    """Everything written, for the caller (and the tests)."""

    dataset: str
    images: list[ImageResult]  # worst first
    summary: dict  # summarize_pq of all images: the evaluator's numbers
    files: dict[str, str] = field(default_factory=dict)
    worst: list[str] = field(default_factory=list)


def _image_result(gt: PanopticGroundTruth, ann: Mapping[str, Any], pred_ids: np.ndarray,
                  pred_segments: list, image_file: str, pred_file: str) -> ImageResult:
    gt_ids = gt.read(ann)
    stats = image_pq_stats(gt_ids, ann["segments_info"], pred_ids, pred_segments,
                           gt.categories, ann["image_id"])
    res = summarize_pq(stats, gt.categories)["All"]
    tp = sum(v[0] for v in stats.per_cat.values())
    fp = sum(v[1] for v in stats.per_cat.values())
    fn = sum(v[2] for v in stats.per_cat.values())
    if tp + fp + fn == 0:  # nothing to find and nothing wrongly found: not a bad image
        res = {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    return ImageResult(ann["image_id"], image_file, pred_file, stats, 100 * res["pq"],
                       100 * res["sq"], 100 * res["rq"], tp, fp, fn)


def _read_predictions(folder: str) -> tuple[list[dict], str]:
    path = os.path.join(folder, "predictions.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: --predictions takes the folder an evaluation with "
            "TEST.SAVE_PREDICTIONS True wrote (OUTPUT_DIR/inference/<dataset>), holding "
            "predictions.json and predictions/")
    anns = load_panoptic_json(path, keys=("annotations",))["annotations"]
    check_unique_ids(anns, path)  # a repeated image would be scored twice
    return anns, path


def analyze_predictions(dataset: str, predictions: str, progress: bool = True
                        ) -> list[ImageResult]:
    """Score each prediction of a saved folder against ``dataset``'s ground truth; worst
    PQ first (ties: more errors first, then by image id)."""
    gt = PanopticGroundTruth(dataset, purpose="analysis")
    files = image_files_by_id(dataset)
    anns, json_path = _read_predictions(predictions)
    results = []
    for pred in tqdm(anns, desc="analyze", unit="img", disable=not progress):
        gt_ann = gt.annotation(pred)
        pred_file = join_inside(os.path.join(predictions, "predictions"), pred["file_name"],
                                json_path)
        pred_ids = read_panoptic_png(pred_file, pred["image_id"])
        image_file = files.get(gt_ann["image_id"], pred["file_name"])
        results.append(_image_result(gt, gt_ann, pred_ids, pred["segments_info"], image_file,
                                     pred_file))
    missing = len(set(gt.image_ids) - {r.image_id for r in results})
    if missing:
        logger.warning(f"{missing} images of '{dataset}' have no prediction in {json_path}")
    results.sort(key=lambda r: (r.pq, -(r.fp + r.fn), str(r.image_id)))
    return results


def run_model_predictions(cfg: CfgNode, dataset: str, output: str) -> dict:
    """Run the model of ``cfg`` over ``dataset`` through the evaluator with its predictions
    saved to ``output`` (predictions.json + predictions/); returns its metrics."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    from ..deploy.runtime import build_inference_model
    from ..engine.weights import load_weights, trust_weights_file
    from ..evaluation.panoptic_evaluator import PanopticEvaluator

    model = build_inference_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS, purpose="the analysis", dataset=dataset,
                 trust_file=trust_weights_file(cfg))
    evaluator = PanopticEvaluator(dataset, output_dir=output, save_panoptic=True)
    loader = build_detection_test_loader(cfg, dataset)
    return dict(inference_on_dataset(model, loader, evaluator) or {})


# ---- files -----------------------------------------------------------------------------


def write_per_image_csv(path: str, results: Iterable[ImageResult]) -> None:
    """``image, image_id, PQ, SQ, RQ, TP, FP, FN`` per image, in the given order (%)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in results:
        writer.writerow([r.name, r.image_id, f"{r.pq:.4f}", f"{r.sq:.4f}", f"{r.rq:.4f}",
                         r.tp, r.fp, r.fn])
    atomic_write(path, buf.getvalue())


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def worst_case_picture(image: np.ndarray, gt_ids: np.ndarray, gt_segments: list,
                       pred_ids: np.ndarray, pred_segments: list, metadata: Any,
                       categories: Mapping[int, Mapping[str, Any]], title: str) -> np.ndarray:
    """image | ground truth | prediction | error map, with a title and a legend strip.

    Size: (TITLE_H + ph + LEGEND_H, 4 pw + 3 GAP) for ``(ph, pw) = panel_size(h, w)``."""
    h, w = gt_ids.shape
    ph, pw = panel_size(h, w)
    scale = ph / h
    errors = error_map(gt_ids, gt_segments, pred_ids, pred_segments)
    panels = [
        fit(image, ph, pw),
        fit(draw_panoptic(image, gt_ids, gt_segments, metadata, categories, scale), ph, pw),
        fit(draw_panoptic(image, pred_ids, pred_segments, metadata, categories, scale), ph, pw),
        fit(render_error_map(image, errors.labels), ph, pw, nearest=True),
    ]
    body = hstack(panels)
    width = body.shape[1]
    canvas = Image.new("RGB", (width, TITLE_H + ph + LEGEND_H), (255, 255, 255))
    canvas.paste(Image.fromarray(body), (0, TITLE_H))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    draw.text((4, 5), title, fill=(0, 0, 0), font=font)
    for i, name in enumerate(PANEL_TITLES):  # above each panel
        draw.text((i * (pw + GAP) + 3, 24), name, fill=(60, 60, 60), font=font)
    x, y = 4, TITLE_H + ph + 5
    for label in (FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_CLASS, CORRECT):
        draw.rectangle((x, y, x + 14, y + 14), fill=ERROR_COLORS[label], outline=(0, 0, 0))
        text = f"{ERROR_NAMES[label]} ({_count(errors, label)})"
        draw.text((x + 20, y), text, fill=(0, 0, 0), font=font)
        x += 20 + int(draw.textlength(text, font=font)) + 16
    draw.text((x, y), "grey: void / crowd (not scored)", fill=(90, 90, 90), font=font)
    return np.asarray(canvas)


def _count(errors: ImageErrors, label: int) -> int:
    return {CORRECT: len(errors.tp), FALSE_POSITIVE: len(errors.fp),
            FALSE_NEGATIVE: len(errors.fn), WRONG_CLASS: len(errors.wrong_class)}[label]


def _worst_pictures(results: Sequence[ImageResult], gt: PanopticGroundTruth, metadata: Any,
                    folder: str, k: int, predictions: Mapping[Any, dict]) -> list[str]:
    written = []
    for rank, r in enumerate(results[:k], 1):
        ann = gt.annotation({"image_id": r.image_id, "file_name": r.image_file})
        image = read_image(r.image_file, format="RGB")
        pred_ids = read_panoptic_png(r.prediction_file, r.image_id)
        title = (f"#{rank} {r.name}: PQ {r.pq:.1f}  SQ {r.sq:.1f}  RQ {r.rq:.1f}  "
                 f"TP {r.tp}  FP {r.fp}  FN {r.fn}")
        picture = worst_case_picture(image, gt.read(ann), ann["segments_info"], pred_ids,
                                     predictions[r.image_id]["segments_info"], metadata,
                                     gt.categories, title)
        stem = os.path.splitext(r.name)[0]
        path = os.path.join(folder, f"{rank:03d}_{stem}.png")
        save_png(path, picture)
        written.append(path)
    return written


def write_per_class_chart(path: str, summary: Mapping[str, Any],
                          categories: Mapping[int, Mapping[str, Any]]) -> tuple[int, int]:
    """PQ/SQ/RQ per category as grouped bars, things and stuff in two rows; returns the
    PNG's (width, height): 100 px per inch of a (max(6, 2 + 0.6 n), 6.4)-inch figure, n the
    larger group."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    groups = [("Things", [c for c in categories.values() if c["isthing"]]),
              ("Stuff", [c for c in categories.values() if not c["isthing"]])]
    n = max(1, *(len(cats) for _, cats in groups))
    fig = Figure(figsize=(max(6.0, 2 + 0.6 * n), 6.4), dpi=100)
    axes = fig.subplots(2, 1)
    per_class = summary["per_class"]
    for ax, (name, cats) in zip(axes, groups, strict=True):
        x = np.arange(len(cats))
        for j, metric in enumerate(("pq", "sq", "rq")):
            vals = [100 * per_class.get(c["id"], {}).get(metric, 0.0) for c in cats]
            bars = ax.bar(x + (j - 1) * 0.27, vals, width=0.27, label=metric.upper())
            if metric == "pq":
                ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ax.set_xticks(x, [str(c["name"]) for c in cats],
                      rotation=30 if len(cats) > 8 else 0, ha="right" if len(cats) > 8 else
                      "center", fontsize=8)
        ax.set_ylim(0, 108)  # room for the PQ labels
        group = summary[name]
        ax.set_title(f"{name}: PQ {100 * group['pq']:.1f}  SQ {100 * group['sq']:.1f}  "
                     f"RQ {100 * group['rq']:.1f}  ({group['n']} categories)", fontsize=10)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncols=3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
    w, h = fig.get_size_inches() * fig.dpi
    return int(round(w)), int(round(h))


def write_index_html(path: str, result: AnalysisResult, source: str) -> None:
    """One self-contained page (relative links, no network): summary, chart, worst cases."""
    folder = os.path.dirname(os.path.abspath(path))

    def rel(p: str) -> str:
        return html.escape(os.path.relpath(p, folder).replace(os.sep, "/"))

    s = result.summary
    rows = "".join(
        f"<tr><td>{g}</td><td>{100 * s[g]['pq']:.2f}</td><td>{100 * s[g]['sq']:.2f}</td>"
        f"<td>{100 * s[g]['rq']:.2f}</td><td>{s[g]['n']}</td></tr>"
        for g in ("All", "Things", "Stuff"))
    worst = []
    for rank, (r, pic) in enumerate(zip(result.images, result.worst, strict=False), 1):
        worst.append(
            f"<h3>#{rank} {html.escape(r.name)}: PQ {r.pq:.1f} (TP {r.tp}, FP {r.fp}, "
            f"FN {r.fn})</h3>\n<a href=\"{rel(pic)}\"><img src=\"{rel(pic)}\" "
            f"alt=\"{html.escape(r.name)}\" style=\"max-width:100%\"></a>")
    legend = ", ".join(
        f"<span style=\"background:rgb{ERROR_COLORS[k]};padding:0 6px\">&nbsp;</span> "
        f"{ERROR_NAMES[k]}" for k in (FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_CLASS, CORRECT))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Panoptic analysis: {html.escape(result.dataset)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:2px 8px;text-align:right}}</style></head><body>
<h1>Panoptic analysis of {html.escape(result.dataset)}</h1>
<p>{len(result.images)} images; predictions: {html.escape(source)}.
Per image: <a href="{rel(result.files['per_image_csv'])}">per_image.csv</a> (worst first).</p>
<h2>Summary (%)</h2>
<table><tr><th></th><th>PQ</th><th>SQ</th><th>RQ</th><th>categories</th></tr>{rows}</table>
<h2>Per category</h2>
<a href="{rel(result.files['per_class_png'])}"><img src="{rel(result.files['per_class_png'])}"
 alt="PQ, SQ, RQ per category" style="max-width:100%"></a>
<h2>Worst {len(result.worst)} images</h2>
<p>Error map: {legend}; void and excused (crowd) regions grey.</p>
{chr(10).join(worst)}
</body></html>
"""
    atomic_write(path, page)


def analyze_results(cfg: CfgNode, output: str, dataset: str | None = None, worst: int = 10,
                    predictions: str | None = None, progress: bool = True) -> AnalysisResult:
    """What tools/analyze_results.py does: predictions of ``dataset`` (default
    ``DATASETS.TEST[0]``) from the model of ``cfg`` or the folder ``predictions``, then
    ``output/per_image.csv``, ``worst/``, ``per_class.png`` and ``index.html``; one run
    at a time per ``output`` (a lock, as training's)."""
    from ..engine.defaults import panoptic_metadata

    meta = panoptic_metadata(cfg, dataset, key="--dataset" if dataset else "DATASETS.TEST")
    prepare_output_dir(output)
    with run_lock(output, what="another analysis", option="--output"):
        return _analyze(cfg, output, meta.name, worst, predictions, progress)


def _analyze(cfg: CfgNode, output: str, dataset: str, worst: int, predictions: str | None,
             progress: bool) -> AnalysisResult:
    if predictions is None:
        predictions = os.path.join(output, "inference")
        run_model_predictions(cfg, dataset, predictions)
        source = f"model {cfg.MODEL.WEIGHTS or '(random weights)'}, saved to inference/"
    else:
        source = predictions
    results = analyze_predictions(dataset, predictions, progress)
    gt = PanopticGroundTruth(dataset, purpose="analysis")
    total = PQStats()
    for r in results:
        total.merge(r.stats)
    summary = summarize_pq(total, gt.categories)
    out = AnalysisResult(dataset, results, summary)
    out.files["per_image_csv"] = os.path.join(output, "per_image.csv")
    write_per_image_csv(out.files["per_image_csv"], results)
    out.files["per_class_png"] = os.path.join(output, "per_class.png")
    write_per_class_chart(out.files["per_class_png"], summary, gt.categories)
    anns = {a["image_id"]: a for a in _read_predictions(predictions)[0]}
    out.worst = _worst_pictures(results, gt, MetadataCatalog.get(dataset),
                                os.path.join(output, "worst"), worst, anns)
    out.files["index_html"] = os.path.join(output, "index.html")
    write_index_html(out.files["index_html"], out, source)
    logger.info(f"PQ {100 * summary['All']['pq']:.2f} over {len(results)} images of {dataset}; "
                f"wrote {out.files['index_html']}")
    return out

