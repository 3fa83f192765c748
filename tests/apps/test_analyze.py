"""tools/analyze_results.py's logic: ground truth as the prediction with known injected errors
(a dropped segment, a relabelled one), so no model is needed."""

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_ext.apps.analyze import (
    CORRECT,
    ERROR_COLORS,
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    GAP,
    LEGEND_H,
    TITLE_H,
    WRONG_CLASS,
    analyze_predictions,
    analyze_results,
    error_map,
    panel_size,
    render_error_map,
)
from panoptic_ext.apps.visualize import to_contiguous
from panoptic_ext.engine import setup_cfg
from panoptic_ext.evaluation import (
    PanopticEvaluator,
    PanopticGroundTruth,
    build_panoptic_evaluators,
    image_pq_stats,
    pq_compute,
)
from panoptic_ext.formats import PanopticFormatError, read_panoptic_png, write_panoptic_png
from panoptic_ext.utils.locks import RunLockedError, run_lock
from tests.helpers.tools import FAST, SYNTHETIC_CONFIG

VAL = "synthetic_panoptic_val_separated"
THINGS = (1, 3, 5)


def _inject(ids, segments, categories):
    """Drop the first thing segment, relabel the second thing (another thing class); returns
    (pred ids, pred segments, dropped id, relabelled id)."""
    things = [s for s in segments if categories[s["category_id"]]["isthing"]]
    assert len(things) >= 2, "the synthetic image needs two things"
    dropped, relabelled = things[0]["id"], things[1]["id"]
    pred = np.where(ids == dropped, 0, ids)
    segs = []
    for s in segments:
        if s["id"] == dropped:
            continue
        s = dict(s)
        if s["id"] == relabelled:
            s["category_id"] = next(c for c in THINGS if c != s["category_id"])
        segs.append(s)
    return pred, segs, dropped, relabelled


def _ground_truth_images(dataset=VAL):
    gt = PanopticGroundTruth(dataset)
    out = []
    for image_id in gt.image_ids:
        ann = gt.annotation({"image_id": image_id})
        out.append((ann, gt.read(ann)))
    return gt, out


def _write_predictions(folder, gt, images, inject_first=True):
    """predictions.json + predictions/*.png as the evaluator writes them; the first image
    gets the injected errors."""
    os.makedirs(os.path.join(folder, "predictions"))
    anns, injected = [], None
    for k, (ann, ids) in enumerate(images):
        segs = [dict(s) for s in ann["segments_info"]]
        if k == 0 and inject_first:
            ids, segs, dropped, relabelled = _inject(ids, segs, gt.categories)
            injected = (ann["image_id"], dropped, relabelled)
        write_panoptic_png(os.path.join(folder, "predictions", ann["file_name"]), ids)
        anns.append({"image_id": ann["image_id"], "file_name": ann["file_name"],
                     "segments_info": segs})
    with open(os.path.join(folder, "predictions.json"), "w") as f:
        json.dump({**gt.header, "annotations": anns}, f)
    return injected


def test_error_map_marks_a_dropped_and_a_relabelled_segment(data):
    gt, images = _ground_truth_images()
    ann, ids = images[0]
    pred, segs, dropped, relabelled = _inject(ids, ann["segments_info"], gt.categories)
    errors = error_map(ids, ann["segments_info"], pred, segs)
    assert errors.fn == [dropped] and errors.fp == []
    assert errors.wrong_class == [(relabelled, relabelled)]
    lab = errors.labels
    assert (lab[ids == dropped] == FALSE_NEGATIVE).all()
    assert (lab[ids == relabelled] == WRONG_CLASS).all()
    others = ~np.isin(ids, [0, dropped, relabelled])
    assert (lab[others] == CORRECT).all() and (lab[ids == 0] == 0).all()
    # the picture: the legend's colours exactly at those pixels
    image = np.zeros((*ids.shape, 3), np.uint8)
    rgb = render_error_map(image, lab)
    assert (rgb[ids == dropped] == ERROR_COLORS[FALSE_NEGATIVE]).all()
    assert (rgb[ids == relabelled] == ERROR_COLORS[WRONG_CLASS]).all()
    # the same counts as PQ's: a wrong class is one FP plus one FN
    stats = image_pq_stats(ids, ann["segments_info"], pred, segs, gt.categories)
    tp, fp, fn = (sum(v[i] for v in stats.per_cat.values()) for i in range(3))
    assert (tp, fp, fn) == (len(errors.tp), 1, 2)


def test_error_map_false_positive_and_void(data):
    ids = np.zeros((8, 8), np.int64)
    ids[:, :4] = 5
    gt_segs = [{"id": 5, "category_id": 7, "iscrowd": 0, "area": 32}]
    pred = ids.copy()
    pred[0:2, 4:8] = 9  # on ground truth void: excused, not a false positive
    pred[4:8, 0:2] = 11  # inside the stuff segment: a false positive
    segs = [{"id": 5, "category_id": 7}, {"id": 9, "category_id": 1},
            {"id": 11, "category_id": 3}]
    errors = error_map(ids, gt_segs, pred, segs)
    assert errors.fp == [11] and errors.fn == [] and errors.tp == [(5, 5)]
    assert (errors.labels[4:8, 0:2] == FALSE_POSITIVE).all()
    assert (errors.labels[0:2, 4:8] == 0).all()


def _one_image_pq(dataset, ann, ids, segments):
    """The evaluator's PQ of one image, fed as a model's output (contiguous ids)."""
    from detectron2.data import MetadataCatalog

    gt = PanopticGroundTruth(dataset)
    ev = PanopticEvaluator(dataset)
    out = to_contiguous(segments, MetadataCatalog.get(dataset), gt.categories)
    ev.process([{"image_id": ann["image_id"], "file_name": ann["file_name"]}],
               [{"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), out)}])
    return ev.evaluate()["panoptic_seg"]


def _links(html_text):
    return re.findall(r'(?:href|src)="([^"]+)"', html_text)


def test_analyze_results_from_saved_predictions(data, tmp_path):
    gt, images = _ground_truth_images()
    preds = tmp_path / "preds"
    image_id, dropped, _ = _write_predictions(str(preds), gt, images)
    cfg = setup_cfg(SYNTHETIC_CONFIG, FAST, eval_only=True)
    out = tmp_path / "analysis"
    result = analyze_results(cfg, str(out), worst=1, predictions=str(preds), progress=False)

    # per_image.csv: worst first, and each row is the evaluator's PQ of that image
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0] == "image,image_id,PQ,SQ,RQ,TP,FP,FN"
    assert len(rows) == 1 + len(images)
    pqs = [float(r.split(",")[2]) for r in rows[1:]]
    assert pqs == sorted(pqs) and pqs[-1] == pytest.approx(100.0) and pqs[0] < 100
    assert rows[1].split(",")[1] == str(image_id)
    by_id = {r.image_id: r for r in result.images}
    for ann, _ids in images:
        r = by_id[ann["image_id"]]
        pred_ids = read_panoptic_png(r.prediction_file)
        segs = json.loads((preds / "predictions.json").read_text())["annotations"]
        segs = next(a for a in segs if a["image_id"] == ann["image_id"])["segments_info"]
        ref = _one_image_pq(VAL, ann, pred_ids, segs)
        row = next(x.split(",") for x in rows[1:] if x.split(",")[1] == str(ann["image_id"]))
        assert float(row[2]) == pytest.approx(ref["PQ"], abs=1e-4)
        assert float(row[3]) == pytest.approx(ref["SQ"], abs=1e-4)
    # summed over images: the evaluator's PQ over the dataset (pq_compute on the files)
    ref = pq_compute(gt.json_path, str(preds / "predictions.json"), gt.metadata.panoptic_root,
                     str(preds / "predictions"))
    assert 100 * result.summary["All"]["pq"] == pytest.approx(100 * ref["All"]["pq"], abs=1e-9)

    # worst/: one picture of the stated size, the dropped segment red in its error map
    worst = sorted(os.listdir(out / "worst"))
    assert len(worst) == 1 and worst[0].startswith("001_")
    pic = np.asarray(Image.open(out / "worst" / worst[0]).convert("RGB"))
    ann, ids = next((a, i) for a, i in images if a["image_id"] == image_id)
    ph, pw = panel_size(*ids.shape)
    assert pic.shape == (TITLE_H + ph + LEGEND_H, 4 * pw + 3 * GAP, 3)
    ys, xs = np.nonzero(ids == dropped)
    k = int(np.argmax(ys))  # the lowest pixel: away from the panel's title
    s = ph // ids.shape[0]
    y, x = TITLE_H + ys[k] * s + s // 2, 3 * (pw + GAP) + xs[k] * s + s // 2
    assert tuple(pic[y, x]) == ERROR_COLORS[FALSE_NEGATIVE]

    # per_class.png decodes; the page's links all resolve to written files
    chart = Image.open(out / "per_class.png")
    chart.load()
    assert chart.size[0] >= 600 and chart.size[1] == 640
    page = (out / "index.html").read_text()
    links = _links(page)
    assert {"per_image.csv", "per_class.png", f"worst/{worst[0]}"} <= set(links)
    for link in links:
        assert (out / link).is_file(), link
    assert "http" not in page


def test_save_predictions_rescores_to_the_reported_pq(data, tmp_path):
    from detectron2.data import MetadataCatalog

    gt, images = _ground_truth_images()
    for flag, expect in (("False", False), ("True", True)):
        cfg = setup_cfg(SYNTHETIC_CONFIG, [*FAST, "TEST.SAVE_PREDICTIONS", flag], eval_only=True)
        folder = tmp_path / flag
        ev = next(e for e in build_panoptic_evaluators(cfg, VAL, str(folder))
                  if isinstance(e, PanopticEvaluator))
        ev.reset()
        for k, (ann, ids) in enumerate(images):
            segs = ann["segments_info"]
            if k == 0:
                ids, segs, _, _ = _inject(ids, segs, gt.categories)
            out = to_contiguous(segs, MetadataCatalog.get(VAL), gt.categories)
            ev.process([{"image_id": ann["image_id"], "file_name": f"x/{ann['file_name']}"}],
                       [{"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), out)}])
        reported = ev.evaluate()["panoptic_seg"]
        assert (folder / "predictions.json").is_file() == expect
        if not expect:
            continue
        assert len(os.listdir(folder / "predictions")) == len(images)
        pan_root = MetadataCatalog.get(VAL).panoptic_root
        again = pq_compute(gt.json_path, str(folder / "predictions.json"), pan_root,
                           str(folder / "predictions"))
        assert 100 * again["All"]["pq"] == reported["PQ"] < 100
        # and the analysis reads them back to the same numbers
        results = analyze_predictions(VAL, str(folder), progress=False)
        assert len(results) == len(images) and results[0].pq < 100


def test_repeated_or_outside_predictions_are_refused(data, tmp_path):
    gt, images = _ground_truth_images()
    preds = tmp_path / "preds"
    _write_predictions(str(preds), gt, images[:2], inject_first=False)
    path = preds / "predictions.json"
    saved = json.loads(path.read_text())
    first = saved["annotations"][0]
    path.write_text(json.dumps({**saved, "annotations": saved["annotations"] * 2}))
    with pytest.raises(PanopticFormatError,
                       match=rf"{path}: image id {first['image_id']!r} is listed twice"):
        analyze_predictions(VAL, str(preds), progress=False)
    first["file_name"] = "../../" + first["file_name"]
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"file_name '\.\./\.\./.*' leads outside"):
        analyze_predictions(VAL, str(preds), progress=False)


def test_one_analysis_per_output_folder(data, tmp_path):
    cfg = setup_cfg(SYNTHETIC_CONFIG, FAST, eval_only=True)
    out = tmp_path / "analysis"
    with run_lock(out, what="another analysis", option="--output"):
        with pytest.raises(RunLockedError, match=f"{out} is in use by another analysis"):
            analyze_results(cfg, str(out), predictions=str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="--output: .*file is a file, not a folder"):
        analyze_results(cfg, str(tmp_path / "file"), predictions=str(tmp_path / "nowhere"))
