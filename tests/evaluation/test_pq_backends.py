"""File-based PQ: hotcoco behind our API gives our (= panopticapi's) numbers; pools never hang."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmarks.pq_fixtures import make_synthetic_dataset, write_panoptic_dataset
from panoptic_ext.evaluation import pq as pq_module
from panoptic_ext.evaluation import pq_compute
from tests.evaluation.test_pq import assert_same
from tests.helpers.tools import REPO

PYTHON = os.environ.get("PANOPTIC_EXT_PYTHON", sys.executable)

CATS = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 3, "name": "never-predicted", "isthing": 1},
    {"id": 4, "name": "pred-only", "isthing": 1},
    {"id": 10, "name": "c", "isthing": 0},
    {"id": 11, "name": "d", "isthing": 0},
]


def _edge_case():
    """Crowd (two of one category: the last wins), void in GT and prediction, a GT category
    never predicted, a predicted category absent from GT, a duplicate-free unlisted GT id."""
    gt = np.zeros((24, 24), np.uint32)
    gt[:10] = 5
    gt[10:, :8] = 7
    gt[10:, 8:16] = 9
    gt[10:, 16:] = 21  # category 3: never predicted
    gt[0:3, 0:3] = 0  # void
    gt[20:, 10:14] = 12  # crowd of category 2
    gt[0:2, 18:] = 13  # second crowd of category 2
    gt[5, 5] = 99  # id in the PNG, not in the JSON
    pred = np.zeros((24, 24), np.uint32)
    pred[:11] = 50
    pred[11:, :8] = 70
    pred[11:, 8:16] = 90
    pred[0:2, 18:] = 91  # on the crowd region: ignored
    pred[14:18, 16:] = 44  # predicted-only category
    pred[1:4, 1:4] = 0

    def seg(i, c, crowd=0):
        return {"id": i, "category_id": c, "iscrowd": crowd, "area": int((gt == i).sum())}

    gt_segs = [seg(5, 10), seg(7, 1), seg(9, 2), seg(21, 3), seg(12, 2, 1), seg(13, 2, 1)]
    pred_segs = [{"id": 50, "category_id": 10}, {"id": 70, "category_id": 1},
                 {"id": 90, "category_id": 2}, {"id": 91, "category_id": 2},
                 {"id": 44, "category_id": 4}]
    return gt, gt_segs, pred, pred_segs


def _write(tmp_path, gt, gt_segs, pred, pred_segs):
    images = [{"id": 1, "file_name": "a.jpg", "height": gt.shape[0], "width": gt.shape[1]}]
    gj = write_panoptic_dataset(str(tmp_path), "gt", images, [
        (gt, {"image_id": 1, "file_name": "a.png", "segments_info": gt_segs})], CATS)
    pj = write_panoptic_dataset(str(tmp_path), "pred", images, [
        (pred, {"image_id": 1, "file_name": "a.png", "segments_info": pred_segs})], CATS)
    return gj, pj


def _both(gj, pj, check_range=True):
    ours = pq_compute(gj, pj, workers=1, backend="panoptic_ext", check_range=check_range)
    hot = pq_compute(gj, pj, workers=1, backend="hotcoco", check_range=check_range)
    return ours, hot


@pytest.mark.parametrize("seed,kwargs", [
    (0, dict(height=48, width=64, n_segments=(0, 14))),
    (1, dict(height=40, width=56, n_segments=(3, 25), strength=2.0, small_ids=True)),
])
def test_hotcoco_equals_ours_on_generated_sets(tmp_path, seed, kwargs):
    pytest.importorskip("hotcoco")
    gj, pj = make_synthetic_dataset(str(tmp_path), 10, seed=seed, **kwargs)
    ours, hot = _both(gj, pj)
    assert ours["All"]["n"] > 0 and 0 < ours["All"]["pq"] < 1
    assert list(hot) == list(ours)
    assert_same(hot, ours)
    # "auto" takes hotcoco here and gives the same numbers again
    assert pq_module.hotcoco_unsupported(json.load(open(gj)), json.load(open(pj))) is None
    assert_same(pq_compute(gj, pj, workers=1), ours)


@pytest.mark.parametrize("change", ["none", "gt_area_small", "gt_area_large", "reverse"])
def test_hotcoco_equals_ours_on_edge_cases(tmp_path, change):
    pytest.importorskip("hotcoco")
    gt, gt_segs, pred, pred_segs = _edge_case()
    if change == "gt_area_small":  # JSON areas win over pixels, as in panopticapi
        gt_segs[1]["area"] = 10
    elif change == "gt_area_large":
        gt_segs[2]["area"] = 1000
    elif change == "reverse":  # the other crowd segment becomes the crowd region
        gt_segs.reverse()
    ours, hot = _both(*_write(tmp_path, gt, gt_segs, pred, pred_segs), check_range=False)
    assert_same(hot, ours)
    per = ours["per_class"]
    assert per[3]["pq"] == 0 and per[4]["pq"] == 0  # FN-only and FP-only categories
    if change == "gt_area_small":
        assert ours["per_class"][1]["sq"] > 1  # an impossible number, from the JSON


@pytest.mark.parametrize("backend", ["panoptic_ext", "auto"])
def test_impossible_numbers_name_the_wrong_area(tmp_path, backend):
    gt, gt_segs, pred, pred_segs = _edge_case()
    gt_segs[1]["area"] = 10  # segment 7 has 112 pixels
    gj, pj = _write(tmp_path, gt, gt_segs, pred, pred_segs)
    with pytest.raises(pq_module.ImpossiblePQError,
                       match=r"SQ of 'a' \(id 1\) = \d+.*image 1 segment 7: JSON area 10 but "
                             r"112 pixels"):
        pq_compute(gj, pj, workers=1, backend=backend)
    # a too large area gives possible (lower) numbers: reported, not an error
    gt_segs[1]["area"] = 1000
    gj, pj = _write(tmp_path, gt, gt_segs, pred, pred_segs)
    assert 0 <= pq_compute(gj, pj, workers=1, backend=backend)["All"]["pq"] <= 1


@pytest.mark.parametrize("bad", ["no_area", "float_area", "no_segments_info"])
def test_auto_falls_back_to_ours_where_hotcoco_differs(tmp_path, bad):
    gt, gt_segs, pred, pred_segs = _edge_case()
    if bad == "no_area":
        del gt_segs[0]["area"]
    elif bad == "float_area":
        gt_segs[0]["area"] = float(gt_segs[0]["area"]) + 0.5
    gj, pj = _write(tmp_path, gt, gt_segs, pred, pred_segs)
    if bad == "no_segments_info":
        data = json.load(open(pj))
        for ann in data["annotations"]:
            del ann["segments_info"]
        json.dump(data, open(pj, "w"))
    why = pq_module.hotcoco_unsupported(json.load(open(gj)), json.load(open(pj)))
    assert why
    if bad == "no_area":  # panopticapi's KeyError, named, from our code
        with pytest.raises(KeyError, match="has no 'area'"):
            pq_compute(gj, pj, workers=1)
    elif bad == "no_segments_info":  # every predicted segment unlisted: named error
        with pytest.raises(KeyError, match="not presented in JSON"):
            pq_compute(gj, pj, workers=1)
    else:
        assert_same(pq_compute(gj, pj, workers=1),
                    pq_compute(gj, pj, workers=1, backend="panoptic_ext"))


def test_hotcoco_rejections_give_our_errors(tmp_path):
    pytest.importorskip("hotcoco")
    gt, gt_segs, pred, pred_segs = _edge_case()
    pred_segs.append({"id": 77, "category_id": 1})  # in the JSON, not in the PNG
    gj, pj = _write(tmp_path, gt, gt_segs, pred, pred_segs)
    with pytest.raises(KeyError, match=r"ID 1 .*\[77\] are presented in JSON"):
        pq_compute(gj, pj, backend="hotcoco")


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match="TEST.PQ_BACKEND='fast'.*auto"):
        pq_module.check_pq_backend("fast")


_REPRO = textwrap.dedent("""
    # no __main__ guard on purpose: pool children must not re-run this script
    import contextlib, io, sys
    sys.path.insert(0, {repo!r})
    from benchmarks.pq_fixtures import make_synthetic_dataset
    from panoptic_ext.evaluation import pq as P
    from panopticapi.evaluation import pq_compute as reference
    P.MIN_IMAGES_FOR_POOL = P.MIN_IMAGES_FOR_WARM_POOL = 6
    small = make_synthetic_dataset({tmp!r} + "/s", 2, seed=1, height=480, width=640)
    big = make_synthetic_dataset({tmp!r} + "/b", 8, seed=2, height=60, width=80)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = reference(*big)
    for ds in (small, big, small, big):  # small: in-process (OpenCV threads run); big: pool
        res = P.pq_compute(*ds, workers=2, backend="panoptic_ext")
    assert abs(res["All"]["pq"] - ref["All"]["pq"]) < 1e-9
    print("done", P._pool_started)
""")


@pytest.mark.timeout(300)
def test_repeated_pq_compute_in_one_process_never_hangs(tmp_path):
    """In-process set, then pooled set, twice, after panopticapi: used to hang in the fork."""
    script = tmp_path / "repro.py"
    script.write_text(_REPRO.format(repo=REPO, tmp=str(tmp_path)))
    out = subprocess.run([PYTHON, str(script)], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("done True")
