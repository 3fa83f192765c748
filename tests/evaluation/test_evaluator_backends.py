"""PanopticEvaluator: hotcoco over written PNGs equals the in-memory path; impossible numbers
are errors naming the input; the evaluator set picks the configured backends."""

import json
import os

import pytest
from detectron2.data import MetadataCatalog

from panoptic_ext.evaluation import FastCOCOEvaluator, ImpossiblePQError, PanopticEvaluator
from panoptic_ext.evaluation.build import build_panoptic_evaluators
from tests.evaluation.test_panoptic_evaluator import (
    LABEL_DIVISOR,
    make_dataset,
    model_io,
    run_evaluator,
)

pytest.importorskip("hotcoco")


@pytest.mark.parametrize("encoding", ["segments", "divisor"])
def test_hotcoco_backend_equals_in_memory(tmp_path, encoding):
    name = make_dataset(tmp_path)
    if encoding == "divisor":
        MetadataCatalog.get(name).label_divisor = LABEL_DIVISOR
    inputs, outputs = model_io(str(tmp_path), name, encoding)
    ours = PanopticEvaluator(name, backend="panoptic_ext")
    ref = run_evaluator(ours, inputs, outputs)["panoptic_seg"]
    fast = PanopticEvaluator(name, backend="hotcoco")
    assert fast._via_files
    got = run_evaluator(fast, inputs, outputs)["panoptic_seg"]
    assert 0 < ref["PQ"] < 100 and list(got) == list(ref)
    for key, value in ref.items():  # summary and every per-class PQ/SQ/RQ
        assert got[key] == pytest.approx(value, abs=1e-7), key
    assert fast.last_stats == ours.last_stats or all(
        fast.last_stats.get(c)[:3] == ours.last_stats.get(c)[:3] for c in ours.last_stats.per_cat)
    # a subset of the images: scored on those only, as in memory
    sub_ref = run_evaluator(ours, inputs[:3], outputs[:3])["panoptic_seg"]
    sub = run_evaluator(fast, inputs[:3], outputs[:3])["panoptic_seg"]
    assert sub["PQ"] == pytest.approx(sub_ref["PQ"], abs=1e-7) and sub["PQ"] != ref["PQ"]


@pytest.mark.parametrize("backend", ["panoptic_ext", "hotcoco"])
def test_impossible_pq_is_an_error_naming_the_segment(tmp_path, backend):
    make_dataset(tmp_path)
    gt_json = os.path.join(str(tmp_path), "gt.json")
    data = json.load(open(gt_json))
    seg = max((s for a in data["annotations"] for s in a["segments_info"] if not s["iscrowd"]),
              key=lambda s: s["area"])
    image = next(a["image_id"] for a in data["annotations"] if seg in a["segments_info"])
    pixels, seg["area"] = seg["area"], 3
    json.dump(data, open(gt_json, "w"))
    name = make_dataset(tmp_path)
    inputs, outputs = model_io(str(tmp_path), name)
    with pytest.raises(ImpossiblePQError,
                       match=rf"image {image} segment {seg['id']}: JSON area 3 but {pixels} "):
        run_evaluator(PanopticEvaluator(name, backend=backend), inputs, outputs)


def test_evaluator_set_uses_the_configured_backends(data):
    from tests.helpers.tools import synthetic_cfg

    cfg = synthetic_cfg(["TEST.PQ_BACKEND", "hotcoco", "TEST.AP_BACKEND", "pycocotools"])
    evaluators = build_panoptic_evaluators(cfg, "synthetic_panoptic_val_separated")
    coco = next(e for e in evaluators if isinstance(e, FastCOCOEvaluator))
    pan = next(e for e in evaluators if isinstance(e, PanopticEvaluator))
    assert not coco.uses_hotcoco and pan._via_files
    cfg.TEST.PQ_BACKEND = "fastest"
    with pytest.raises(ValueError, match="TEST.PQ_BACKEND='fastest'"):
        build_panoptic_evaluators(cfg, "synthetic_panoptic_val_separated")


def test_class_table_sorted_by_pq_with_counts(tmp_path, caplog):
    import logging

    name = make_dataset(tmp_path)
    inputs, outputs = model_io(str(tmp_path), name)
    evaluator = PanopticEvaluator(name)
    with caplog.at_level(logging.INFO, logger="panoptic_ext.evaluation.panoptic_evaluator"):
        run_evaluator(evaluator, inputs, outputs)
    table = next(r.getMessage() for r in caplog.records
                 if r.getMessage().startswith("Per-category panoptic results"))
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in table.splitlines()[3:]]
    body = [r for r in rows if r and r[3] != "-"]
    pqs = [float(r[3]) for r in body]
    assert pqs == sorted(pqs, reverse=True) and len(pqs) > 3
    stats = evaluator.last_stats
    for r in body:  # TP/FP/FN are the accumulated counts of that category
        assert [int(v) for v in r[6:9]] == list(stats.get(int(r[1]))[:3])
    unseen = [r for r in rows if r and r[3] == "-"]  # last, and really never seen
    assert rows[len(body):] == unseen
    assert all(r[6:9] == ["0", "0", "0"] for r in unseen)
