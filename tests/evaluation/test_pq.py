"""panoptic_ext.evaluation.pq against panopticapi on generated panoptic data."""

import contextlib
import io
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile

import cv2
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from panopticapi.evaluation import PQStat, pq_compute_single_core
from panopticapi.evaluation import pq_compute as reference_pq_compute
from panopticapi.utils import rgb2id
from PIL import Image

from benchmarks.pq_fixtures import make_synthetic_dataset
from panoptic_ext.evaluation import (
    PanopticFormatError,
    PQStats,
    image_pq_stats,
    pq_compute,
    read_panoptic_png,
    summarize_pq,
)
from panoptic_ext.evaluation import pq as pq_module
from tests.helpers.tools import REPO

PYTHON = os.environ.get("PANOPTIC_EXT_PYTHON", sys.executable)

# things 1, 2, 3 (3 is never used by the ground truth), stuff 10, 11
CATEGORIES = [
    {"id": 1, "name": "a", "isthing": 1},
    {"id": 2, "name": "b", "isthing": 1},
    {"id": 3, "name": "pred-only", "isthing": 1},
    {"id": 10, "name": "c", "isthing": 0},
    {"id": 11, "name": "d", "isthing": 0},
]
CATS = {c["id"]: c for c in CATEGORIES}


# ----------------------------------------------------------------------------- helpers


def _close(a, b, tol=1e-9):
    return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def assert_same(ours, ref):
    """Every number equal to 1e-9: All/Things/Stuff (pq, sq, rq, n) and per_class."""
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"], group
        for k in ("pq", "sq", "rq"):
            assert _close(ours[group][k], ref[group][k]), (group, k, ours[group], ref[group])
    assert list(ours["per_class"]) == list(ref["per_class"])
    for cat, r in ref["per_class"].items():
        for k in ("pq", "sq", "rq"):
            assert _close(ours["per_class"][cat][k], r[k]), (cat, k)


def write_png(path, id_map):
    ids = np.asarray(id_map, dtype=np.uint32)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def reference_average(pq_stat, categories):
    """panopticapi's aggregation; a group it cannot average (n == 0) is reported as zeros."""
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            results[name], per_class = pq_stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:
            results[name] = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
            per_class = {c: {"pq": 0.0, "sq": 0.0, "rq": 0.0} for c, i in categories.items()
                         if isthing is None or (i["isthing"] == 1) == isthing}
        if name == "All":
            results["per_class"] = per_class
    return results


def reference_single_image(gt_map, gt_segs, pred_map, pred_segs, categories=CATS):
    """panopticapi's own per-image code on PNG files; returns its PQStat."""
    with tempfile.TemporaryDirectory() as tmp:
        write_png(os.path.join(tmp, "gt.png"), gt_map)
        write_png(os.path.join(tmp, "pred.png"), pred_map)
        gt_ann = {"image_id": 7, "file_name": "gt.png", "segments_info": gt_segs}
        pred_ann = {"image_id": 7, "file_name": "pred.png", "segments_info": pred_segs}
        return quiet(pq_compute_single_core, 0, [(gt_ann, pred_ann)], tmp, tmp, categories)


def dataset(tmp_path, n_images, seed, **kwargs):
    return make_synthetic_dataset(str(tmp_path), n_images, seed=seed, **kwargs)


# ----------------------------------------------------------------------------- whole datasets


@pytest.mark.parametrize(
    "seed,kwargs",
    [
        (0, dict(height=48, width=64, n_segments=(0, 14))),
        (1, dict(height=40, width=56, n_segments=(3, 25), strength=2.0, small_ids=True)),
        (2, dict(height=64, width=48, n_segments=(10, 40), strength=0.5)),
    ],
)
def test_pq_compute_equals_panopticapi(tmp_path, seed, kwargs):
    gt_json, pred_json = dataset(tmp_path, 12, seed, **kwargs)
    ref = quiet(reference_pq_compute, gt_json, pred_json)
    for workers in (1, 2):
        ours = pq_compute(gt_json, pred_json, workers=workers)
        assert list(ours) == list(ref)
        assert_same(ours, ref)


def test_explicit_folders_and_verbose_table(tmp_path, capsys):
    gt_json, pred_json = dataset(tmp_path, 3, 5, height=32, width=40)
    ref = quiet(reference_pq_compute, gt_json, pred_json, str(tmp_path / "gt"),
                str(tmp_path / "pred"))
    ours = pq_compute(gt_json, pred_json, str(tmp_path / "gt"), str(tmp_path / "pred"),
                      verbose=True)
    assert_same(ours, ref)
    out = capsys.readouterr().out
    assert "All" in out and "Things" in out and "Stuff" in out and "PQ" in out


def _rewrite(json_path, fn):
    with open(json_path) as f:
        data = json.load(f)
    fn(data)
    with open(json_path, "w") as f:
        json.dump(data, f)


def test_empty_predictions_and_images_without_segments(tmp_path):
    gt_json, pred_json = dataset(tmp_path, 6, 3, height=32, width=48, n_segments=(0, 10))

    def empty_some(data):
        for k, ann in enumerate(data["annotations"]):
            if k % 2 == 0:
                ann["segments_info"] = []
                write_png(tmp_path / "pred" / ann["file_name"], np.zeros((32, 48), np.uint32))

    _rewrite(pred_json, empty_some)

    def no_gt_segments(data):
        ann = data["annotations"][1]
        ann["segments_info"] = []
        write_png(tmp_path / "gt" / ann["file_name"], np.zeros((32, 48), np.uint32))

    _rewrite(gt_json, no_gt_segments)
    assert_same(pq_compute(gt_json, pred_json, workers=2),
                quiet(reference_pq_compute, gt_json, pred_json))


def test_all_empty_group_is_zero_where_panopticapi_divides_by_zero(tmp_path):
    """Without any stuff segment panopticapi raises ZeroDivisionError; we report 0, n=0."""
    gt_json, pred_json = dataset(tmp_path, 3, 4, height=32, width=48)
    stuff = {c["id"] for c in json.load(open(gt_json))["categories"] if c["isthing"] == 0}
    for path, folder in ((gt_json, "gt"), (pred_json, "pred")):
        def drop_stuff(data, folder=folder):
            for ann in data["annotations"]:
                png = tmp_path / folder / ann["file_name"]
                ids = read_panoptic_png(str(png))
                for seg in ann["segments_info"]:
                    if seg["category_id"] in stuff:
                        ids[ids == seg["id"]] = 0
                ann["segments_info"] = [s for s in ann["segments_info"]
                                        if s["category_id"] not in stuff]
                write_png(png, ids)

        _rewrite(path, drop_stuff)
    with pytest.raises(ZeroDivisionError):
        quiet(reference_pq_compute, gt_json, pred_json)
    ours = pq_compute(gt_json, pred_json, workers=1)
    assert ours["Stuff"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert ours["Things"]["n"] > 0


# ----------------------------------------------------------------------------- property test


def _ids(draw, n):
    small = st.integers(1, 40)
    large = st.integers(1, (1 << 24) - 1)
    return draw(st.lists(st.one_of(small, large), min_size=n, max_size=n, unique=True))


@st.composite
def image_case(draw):
    """Random GT/prediction pair covering void, crowd, unlisted ids and odd JSON."""
    h0, w0 = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    scale = draw(st.integers(1, 4))
    gt_ids = _ids(draw, draw(st.integers(0, 7)))
    pred_ids = _ids(draw, draw(st.integers(0, 7)))

    def id_map(pool):
        coarse = draw(hnp.arrays(np.int64, (h0, w0), elements=st.sampled_from([0, *pool])))
        return np.kron(coarse, np.ones((scale, scale), np.int64))

    gt_map, pred_map = id_map(gt_ids), id_map(pred_ids)
    gt_cats = [1, 2, 10, 11, 99]  # 99 is not a category: allowed in GT, ignored
    gt_segs = []
    for sid in gt_ids:
        true_area = int((gt_map == sid).sum())
        if true_area and draw(st.integers(0, 9)) == 0:
            continue  # in the PNG but not in the JSON: neither void nor a segment
        area = true_area
        if draw(st.integers(0, 5)) == 0:  # inconsistent JSON area (kept >= 1)
            area = max(1, true_area + draw(st.integers(-true_area, 10)))
        if draw(st.booleans()) and draw(st.booleans()):
            area = float(area)
        gt_segs.append({"id": sid, "category_id": draw(st.sampled_from(gt_cats)),
                        "iscrowd": int(draw(st.integers(0, 3)) == 0), "area": area})
    if draw(st.integers(0, 5)) == 0:  # listed but absent from the PNG
        gt_segs.append({"id": (1 << 24) - 7, "category_id": draw(st.sampled_from(gt_cats)),
                        "iscrowd": 0, "area": 5})
    if draw(st.integers(0, 7)) == 0 and (gt_map == 0).any():  # GT segment with id 0
        gt_segs.append({"id": 0, "category_id": draw(st.sampled_from([1, 10])),
                        "iscrowd": int(draw(st.booleans())), "area": int((gt_map == 0).sum())})
    if gt_segs and draw(st.integers(0, 7)) == 0:  # duplicate id: the later entry wins
        gt_segs.append(dict(gt_segs[0], category_id=draw(st.sampled_from(gt_cats))))
    draw(st.randoms()).shuffle(gt_segs)

    pred_cats = [1, 2, 3, 10, 11]
    present = [int(v) for v in np.unique(pred_map) if v != 0]
    pred_segs = [{"id": sid, "category_id": draw(st.sampled_from(pred_cats))}
                 for sid in present]
    if (pred_map == 0).any() and draw(st.integers(0, 7)) == 0:  # id 0 claimed by a segment
        pred_segs.append({"id": 0, "category_id": draw(st.sampled_from(pred_cats))})
    if pred_segs and draw(st.integers(0, 7)) == 0:
        pred_segs.append(dict(pred_segs[-1], category_id=draw(st.sampled_from(pred_cats))))
    return gt_map, gt_segs, pred_map, pred_segs


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=image_case())
def test_image_stats_equal_panopticapi(case):
    gt_map, gt_segs, pred_map, pred_segs = case
    ref_stat = reference_single_image(gt_map, gt_segs, pred_map, pred_segs)
    ours = image_pq_stats(gt_map, gt_segs, pred_map, pred_segs, CATS, image_id=7)
    for cat, ref_cat in ref_stat.pq_per_cat.items():
        tp, fp, fn, iou = ours.get(cat)
        assert (tp, fp, fn) == (ref_cat.tp, ref_cat.fp, ref_cat.fn), cat
        assert _close(iou, ref_cat.iou), cat
    for cat, (tp, fp, fn, iou) in ours.per_cat.items():  # nothing extra either
        assert (tp, fp, fn, iou) == (0, 0, 0, 0.0) or cat in ref_stat.pq_per_cat
    assert_same(summarize_pq(ours, CATEGORIES), reference_average(ref_stat, CATS))


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=image_case())
def test_large_table_code_paths_agree(case):
    """The int32 lookup and the np.unique (sparse) counting give the same stats."""
    gt_map, gt_segs, pred_map, pred_segs = case
    expected = image_pq_stats(gt_map, gt_segs, pred_map, pred_segs, CATS)
    for u16, dense in ((0, 1 << 22), (0, 0)):
        old = pq_module._U16_LIMIT, pq_module._DENSE_LIMIT
        pq_module._U16_LIMIT, pq_module._DENSE_LIMIT = u16, dense
        try:
            got = image_pq_stats(gt_map, gt_segs, pred_map, pred_segs, CATS)
        finally:
            pq_module._U16_LIMIT, pq_module._DENSE_LIMIT = old
        assert got == expected


@pytest.mark.parametrize(
    "pred_map,pred_segs",
    [
        # IoU exactly 0.5 is not a match
        (np.array([[5, 0, 0], [0, 0, 0]]), [{"id": 5, "category_id": 1}]),
        # half on void is not enough to ignore an unmatched prediction (needs > 0.5)
        (np.array([[0, 7, 7], [0, 0, 0]]), [{"id": 7, "category_id": 2}]),
        # more than half on void + the crowd region of its category: ignored
        (np.array([[0, 7, 7], [7, 0, 0]]), [{"id": 7, "category_id": 2}]),
        # crowd region of another category does not count
        (np.array([[0, 7, 7], [7, 0, 0]]), [{"id": 7, "category_id": 1}]),
    ],
)
def test_thresholds_are_strict(pred_map, pred_segs):
    gt_map = np.array([[5, 5, 0], [8, 8, 8]])
    gt_segs = [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 2},
               {"id": 8, "category_id": 2, "iscrowd": 1, "area": 3}]
    ref = reference_single_image(gt_map, gt_segs, pred_map, pred_segs)
    ours = image_pq_stats(gt_map, gt_segs, pred_map, pred_segs, CATS)
    for cat in (1, 2):
        r = ref.pq_per_cat[cat]
        assert ours.get(cat)[:3] == (r.tp, r.fp, r.fn)


def test_last_crowd_segment_of_a_category_wins():
    """panopticapi keeps one crowd region per category: the last one listed, not the union."""
    gt_map = np.array([[3, 3, 4, 4], [0, 0, 0, 0]])
    pred_map = np.array([[9, 9, 9, 0], [0, 0, 0, 0]])
    pred_segs = [{"id": 9, "category_id": 1}]
    for order in ((3, 4), (4, 3)):
        gt_segs = [{"id": i, "category_id": 1, "iscrowd": 1, "area": 2} for i in order]
        ref = reference_single_image(gt_map, gt_segs, pred_map, pred_segs)
        ours = image_pq_stats(gt_map, gt_segs, pred_map, pred_segs, CATS)
        assert ours.get(1)[:3] == (ref[1].tp, ref[1].fp, ref[1].fn)
    assert ref[1].fp == 0  # 9 lies 2/3 on crowd 3 (listed last)


def test_many_segments_per_image():
    """Hundreds of segments (beyond the uint16 table) still match panopticapi."""
    rng = np.random.default_rng(0)
    gt_ids = rng.choice(np.arange(1, 1 << 24), 400, replace=False)
    gt_map = np.kron(rng.choice(gt_ids, (32, 32)), np.ones((2, 2), np.int64))
    pred_map = gt_map.copy()
    pred_map[::3] = np.roll(pred_map[::3], 1, axis=1)
    gt_segs = [{"id": int(i), "category_id": int(rng.choice([1, 2, 10])), "iscrowd": 0,
                "area": int((gt_map == i).sum())} for i in np.unique(gt_map)]
    cat_of = {s["id"]: s["category_id"] for s in gt_segs}
    pred_segs = [{"id": int(i), "category_id": cat_of[int(i)]} for i in np.unique(pred_map)]
    ref = reference_single_image(gt_map, gt_segs, pred_map, pred_segs)
    ours = image_pq_stats(gt_map, gt_segs, pred_map, pred_segs, CATS)
    assert_same(summarize_pq(ours, CATS), reference_average(ref, CATS))


# ----------------------------------------------------------------------------- errors


def _one_image(tmp_path, gt_map, gt_segs, pred_map, pred_segs, image_id=42):
    for name in ("gt", "pred"):
        os.makedirs(tmp_path / name, exist_ok=True)
    write_png(tmp_path / "gt" / "a.png", gt_map)
    write_png(tmp_path / "pred" / "a.png", pred_map)
    images = [{"id": image_id, "file_name": "a.jpg"}]
    for name, segs in (("gt", gt_segs), ("pred", pred_segs)):
        with open(tmp_path / f"{name}.json", "w") as f:
            json.dump({"images": images, "categories": CATEGORIES, "annotations": [
                {"image_id": image_id, "file_name": "a.png", "segments_info": segs}]}, f)
    return str(tmp_path / "gt.json"), str(tmp_path / "pred.json")


GT_MAP = np.array([[5, 5, 0], [6, 6, 6]], np.uint32)
GT_SEGS = [{"id": 5, "category_id": 1, "iscrowd": 0, "area": 2},
           {"id": 6, "category_id": 10, "iscrowd": 0, "area": 3}]


@pytest.mark.parametrize(
    "pred_map,pred_segs,words",
    [
        (np.array([[5, 5, 0], [9, 6, 6]]), [{"id": 5, "category_id": 1},
                                            {"id": 6, "category_id": 10}],
         ["42", "segment with ID 9", "presented in PNG and not presented in JSON"]),
        (np.array([[5, 5, 0], [6, 6, 6]]), [{"id": 5, "category_id": 1},
                                            {"id": 6, "category_id": 10},
                                            {"id": 8, "category_id": 1}],
         ["42", "[8]", "presented in JSON and not presented in PNG"]),
        (np.array([[5, 5, 0], [6, 6, 6]]), [{"id": 5, "category_id": 1},
                                            {"id": 6, "category_id": 77}],
         ["42", "segment with ID 6", "unknown category_id 77"]),
        (np.array([[5, 5], [6, 6]]), [{"id": 5, "category_id": 1},
                                      {"id": 6, "category_id": 10}],
         ["42", "size", "2x2", "3x2"]),
    ],
    ids=["png-not-in-json", "json-not-in-png", "unknown-category", "size-mismatch"],
)
def test_bad_predictions_name_image_and_segment(tmp_path, pred_map, pred_segs, words):
    gt_json, pred_json = _one_image(tmp_path, GT_MAP, GT_SEGS, pred_map, pred_segs)
    for call in (
        lambda: image_pq_stats(GT_MAP, GT_SEGS, pred_map, pred_segs, CATS, image_id=42),
        lambda: pq_compute(gt_json, pred_json, workers=1),
        lambda: pq_compute(gt_json, pred_json, workers=2),
    ):
        with pytest.raises(PanopticFormatError) as info:
            call()
        assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
        for word in words:
            assert word in str(info.value), (word, str(info.value))
    if "size" not in words:  # panopticapi reports the same problem
        with pytest.raises(KeyError):
            quiet(reference_pq_compute, gt_json, pred_json)


def test_first_error_in_panopticapi_order():
    pred = np.array([[5, 5, 0], [9, 6, 6]])
    segs = [{"id": 5, "category_id": 77}, {"id": 6, "category_id": 10},
            {"id": 8, "category_id": 1}]  # unknown category on 5 comes before 9 and 8
    with pytest.raises(PanopticFormatError, match="segment with ID 5 has unknown category_id"):
        image_pq_stats(GT_MAP, GT_SEGS, pred, segs, CATS, image_id=1)


def test_missing_prediction_and_folders(tmp_path):
    gt_json, pred_json = _one_image(tmp_path, GT_MAP, GT_SEGS, GT_MAP, GT_SEGS)
    _rewrite(pred_json, lambda d: d["annotations"][0].update(image_id=43))
    with pytest.raises(PanopticFormatError, match="no prediction for the image with id: 42"):
        pq_compute(gt_json, pred_json)
    with pytest.raises(FileNotFoundError, match="doesn't exist"):
        pq_compute(gt_json, pred_json, pred_folder=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("which", ["gt", "pred"])
def test_repeated_image_or_segment_is_an_error(tmp_path, which):
    gt_json, pred_json = _one_image(tmp_path, GT_MAP, GT_SEGS, GT_MAP, GT_SEGS)
    path = gt_json if which == "gt" else pred_json
    _rewrite(path, lambda d: d["annotations"].append(d["annotations"][0]))
    with pytest.raises(PanopticFormatError, match=rf"{path}: image id 42 is listed twice"):
        pq_compute(gt_json, pred_json, backend="panoptic_ext")
    _rewrite(path, lambda d: d["annotations"].pop())
    _rewrite(path, lambda d: d["annotations"][0]["segments_info"].append(dict(GT_SEGS[1])))
    with pytest.raises(PanopticFormatError, match="image 42 lists segment id.s. 6 twice"):
        pq_compute(gt_json, pred_json)  # auto (hotcoco where installed) too


@pytest.mark.parametrize("name", ["../../secret.png", "/etc/secret.png"])
def test_file_names_stay_inside_their_folder(tmp_path, name):
    gt_json, pred_json = _one_image(tmp_path, GT_MAP, GT_SEGS, GT_MAP, GT_SEGS)
    _rewrite(pred_json, lambda d: d["annotations"][0].update(file_name=name))
    with pytest.raises(ValueError, match=rf"{pred_json}: file_name '{name}' leads outside"):
        pq_compute(gt_json, pred_json)
    if name.startswith(".."):  # asked for: read where it points
        (tmp_path / "pred" / "sub").mkdir()
        _rewrite(pred_json, lambda d: d["annotations"][0].update(file_name="sub/../a.png"))
        assert pq_compute(gt_json, pred_json)["All"]["pq"] == 1.0  # inside: fine
        _rewrite(pred_json, lambda d: d["annotations"][0].update(file_name="../pred/a.png"))
        assert pq_compute(gt_json, pred_json, allow_outside=True)["All"]["pq"] == 1.0


def test_default_folders_strip_only_the_json_suffix(tmp_path):
    base = tmp_path / "run.json.d"
    base.mkdir()
    gt_json, pred_json = _one_image(base, GT_MAP, GT_SEGS, GT_MAP, GT_SEGS)
    assert pq_compute(gt_json, pred_json)["All"]["pq"] == 1.0


def test_cli_names_a_bad_json_output_before_the_work(tmp_path, capsys):
    from panoptic_ext.evaluation.__main__ import main

    gt_json, pred_json = _one_image(tmp_path, GT_MAP, GT_SEGS, GT_MAP, GT_SEGS)
    assert main([gt_json, pred_json, "--json", str(tmp_path)]) == 2
    assert f"--json: {tmp_path} is a folder" in capsys.readouterr().err
    assert main([gt_json, pred_json, "--json", gt_json]) == 2  # an input
    assert f"would replace the input {gt_json}" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    assert main([gt_json, pred_json, "--json", str(tmp_path / "f" / "res.json")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    _rewrite(pred_json, lambda d: d["annotations"][0].update(file_name="../gt/a.png"))
    assert main([gt_json, pred_json]) == 2
    assert "leads outside" in capsys.readouterr().err
    assert main([gt_json, pred_json, "--allow-outside-paths"]) == 0


def test_bad_id_maps_and_segments():
    with pytest.raises(PanopticFormatError, match="outside"):
        image_pq_stats(np.full((2, 2), -1), [], np.zeros((2, 2), int), [], CATS, image_id=3)
    with pytest.raises(PanopticFormatError, match="2-D integer"):
        image_pq_stats(np.zeros((2, 2), float), [], np.zeros((2, 2), int), [], CATS)
    with pytest.raises(PanopticFormatError, match="segment with ID 5 has no 'iscrowd'"):
        image_pq_stats(GT_MAP, [{"id": 5, "category_id": 1}], GT_MAP * 0, [], CATS, 3)


# ----------------------------------------------------------------------------- PNG reading


def _panopticapi_read(path):
    return rgb2id(np.array(Image.open(path), dtype=np.uint32))


def test_png_reading_matches_panopticapi(tmp_path):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 1 << 24, size=(17, 23)).astype(np.uint32)
    rgb = np.stack([ids & 255, (ids >> 8) & 255, ids >> 16], axis=-1).astype(np.uint8)
    alpha = rng.integers(0, 256, size=(17, 23, 1)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pil.png")
    cv2.imwrite(str(tmp_path / "cv2.png"), rgb[..., ::-1])
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1)).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "trns.png", transparency=(1, 2, 3))
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    for name in ("pil", "cv2", "rgba", "trns", "rgb16"):
        path = str(tmp_path / f"{name}.png")
        np.testing.assert_array_equal(read_panoptic_png(path), _panopticapi_read(path), name)
    np.testing.assert_array_equal(read_panoptic_png(str(tmp_path / "pil.png")), ids)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with pytest.raises(PanopticFormatError, match="image with ID 5 .* not an RGB image"):
        read_panoptic_png(str(tmp_path / "gray.png"), image_id=5)


# ----------------------------------------------------------------------------- stats object


def test_stats_merge_pickle_and_aggregation():
    a, b = PQStats(), PQStats()
    a.add(1, tp=2, fp=1, iou=1.5)
    b.add(1, fn=1)
    b.add(10, tp=1, iou=0.75)
    total = pickle.loads(pickle.dumps(a)) + b
    assert total.get(1) == (2, 1, 1, 1.5) and total.get(10) == (1, 0, 0, 0.75)
    assert total.get(2) == (0, 0, 0, 0.0)
    res = summarize_pq(total, CATEGORIES)
    assert list(res) == ["All", "per_class", "Things", "Stuff"]
    assert res["Things"]["n"] == 1 and res["Stuff"]["n"] == 1 and res["All"]["n"] == 2
    assert res["per_class"][1] == {"pq": 1.5 / 3, "sq": 0.75, "rq": 2 / 3}
    assert res["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    ref = PQStat()
    for cat, (tp, fp, fn, iou) in total.per_cat.items():
        ref[cat].tp, ref[cat].fp, ref[cat].fn, ref[cat].iou = tp, fp, fn, iou
    assert_same(res, reference_average(ref, CATS))


# ----------------------------------------------------------------------------- command lines


def test_cli_prints_summary_and_per_class(tmp_path):
    gt_json, pred_json = dataset(tmp_path, 4, 8, height=48, width=64, n_segments=(8, 20))
    out = subprocess.run(
        [PYTHON, "-m", "panoptic_ext.evaluation", gt_json, pred_json, str(tmp_path / "gt"),
         str(tmp_path / "pred"), "--workers", "2", "--json", str(tmp_path / "res.json")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "#categories" in out and "pred-only" not in out and "thing0" in out
    saved = json.load(open(tmp_path / "res.json"))
    ref = quiet(reference_pq_compute, gt_json, pred_json)
    assert abs(saved["All"]["pq"] - ref["All"]["pq"]) < 1e-9


def test_benchmark_script_smoke(tmp_path):
    out = subprocess.run(
        [PYTHON, os.path.join(REPO, "tools", "benchmark_pq.py"), "--images", "4", "--height",
         "40", "--width", "48", "--workdir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "speedup" in out and "ms per 48x40 image" in out
