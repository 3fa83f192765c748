"""Merge tuning (tools/tune_combine.py, panoptic_ext.apps.tune) on a 2-iteration model trained on
64-px synthetic data: the table, the YAML, and the default row being the model's own PQ."""

import re

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from panoptic_ext.apps.tune import _raw_outputs
from panoptic_ext.evaluation import PanopticEvaluator
from tests.helpers.tools import SYNTHETIC_CONFIG, synthetic_cfg, tool_main


def _table(text):
    """Rows of the printed pipe table as lists of cells."""
    return [[c.strip() for c in ln.strip().strip("|").split("|")]
            for ln in text.splitlines() if ln.startswith("|") and not ln.startswith("|--")][1:]


def _model(opts):
    cfg = synthetic_cfg(opts)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model, cfg


def test_tune_combine_writes_best_setting(tiny_root, tiny_opts, tmp_path, capsys):
    out = tmp_path / "tuned.yaml"
    rc = tool_main("tune_combine.py")([
        "--config-file", SYNTHETIC_CONFIG, "--output", str(out), "--overlap-thresh", "0.3,0.8",
        "--stuff-area", "0,200", "--score-thresh", "0.0,0.02", *tiny_opts])
    assert rc == 0
    text = capsys.readouterr().out
    rows = _table(text)
    assert len(rows) == 3 * 3 * 3  # each axis: 2 values + the config's
    assert [r[1:4] for r in rows if r[-1] == "default"] == [["0.500", "64", "0.500"]]
    pq = {k: float(re.search(rf"^{k}: +PQ ([0-9.]+)", text, re.M).group(1))
          for k in ("default", "best")}
    assert pq["best"] >= pq["default"]
    assert float(rows[0][4]) == pytest.approx(pq["best"], abs=1e-3)
    assert re.search(r"^gain: +[+-][0-9.]+ PQ", text, re.M)

    cfg = synthetic_cfg(tiny_opts)
    cfg.merge_from_file(str(out))  # merges: same keys, same types
    c = cfg.MODEL.PANOPTIC_FPN.COMBINE
    assert (c.OVERLAP_THRESH, c.STUFF_AREA_LIMIT, c.INSTANCES_CONFIDENCE_THRESH) == (
        float(rows[0][1]), int(rows[0][2]), float(rows[0][3]))

    # the default row is what the model itself scores with PanopticEvaluator
    model, cfg = _model(tiny_opts)
    name = cfg.DATASETS.TEST[0]
    res = inference_on_dataset(model, build_detection_test_loader(cfg, name),
                               PanopticEvaluator(name))
    assert res["panoptic_seg"]["PQ"] == pytest.approx(pq["default"], abs=1e-3)


def test_tuning_merges_the_models_own_outputs(tiny_root, tiny_opts):
    """Each image's tuning input, merged by the model's strategy with other thresholds, is what
    inference gives with those thresholds (masks pasted down to the lowest score searched)."""
    model, cfg = _model(tiny_opts)
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    base = model.combine
    lowest = 0.0
    checked = things = 0
    for inp, combine_inputs in _raw_outputs(model, loader, lowest):
        for setting in ({"score_thresh": 0.0, "overlap_thresh": 0.3},
                        {"score_thresh": 0.02, "stuff_area_thresh": 0}):
            combine = base.with_thresholds(**setting)
            pan, segments = model.run_combine(combine_inputs, combine)
            model.combine = combine
            try:
                with torch.no_grad():
                    ref = model([inp])[0]["panoptic_seg"]
            finally:
                model.combine = base
            assert torch.equal(pan, ref[0]) and segments == ref[1]
            things += sum(s["isthing"] for s in segments)
        checked += 1
    assert checked == 2 and things > 0
