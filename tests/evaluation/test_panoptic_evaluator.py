"""PanopticEvaluator against Detectron2's COCOPanopticEvaluator and panopticapi."""

import contextlib
import copy
import io
import json
import os
import uuid

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic, register_coco_panoptic_separated
from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi.evaluation import pq_compute as reference_pq_compute

from benchmarks.pq_fixtures import make_synthetic_dataset
from panoptic_ext.evaluation import PanopticEvaluator, PanopticFormatError, read_panoptic_png

SUMMARY_KEYS = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]
LABEL_DIVISOR = 1000


def quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def make_dataset(root, n_images=8, seed=0, separated=False, name=None):
    """A tiny COCO panoptic dataset registered like Detectron2's builtin ones."""
    root = str(root)
    gt_json = os.path.join(root, "gt.json")
    if not os.path.exists(gt_json):
        make_synthetic_dataset(root, n_images, seed=seed, height=48, width=64,
                               n_segments=(4, 18))
    with open(gt_json) as f:
        cats = json.load(f)["categories"]
    things = [c for c in cats if c["isthing"] == 1]
    stuff = [c for c in cats if c["isthing"] != 1]
    name = name or f"pq_test_{uuid.uuid4().hex[:8]}"
    image_root = os.path.join(root, "images")
    if separated:
        meta = {
            "thing_classes": [c["name"] for c in things],
            "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
            "stuff_classes": ["things"] + [c["name"] for c in stuff],
            "stuff_dataset_id_to_contiguous_id": {
                0: 0, **{c["id"]: i + 1 for i, c in enumerate(stuff)}},
        }
        register_coco_panoptic_separated(name, meta, image_root, os.path.join(root, "gt"),
                                         gt_json, os.path.join(root, "sem"), gt_json)
        name += "_separated"
    else:
        meta = {
            "thing_classes": [c["name"] for c in cats],
            "stuff_classes": [c["name"] for c in cats],
            "thing_dataset_id_to_contiguous_id": {
                c["id"]: i for i, c in enumerate(cats) if c["isthing"] == 1},
            "stuff_dataset_id_to_contiguous_id": {
                c["id"]: i for i, c in enumerate(cats) if c["isthing"] != 1},
        }
        register_coco_panoptic(name, meta, image_root, os.path.join(root, "gt"), gt_json)
    return name


def model_io(root, dataset_name, encoding="segments"):
    """Inputs/outputs as a Panoptic FPN model gives them, from the generated predictions.

    ``encoding="segments"``: small contiguous segment ids + segments_info with contiguous
    category ids and ``isthing``; ``"divisor"``: category * label_divisor + instance with
    -1 for void and segments_info None.
    """
    meta = MetadataCatalog.get(dataset_name)
    things = meta.thing_dataset_id_to_contiguous_id
    stuff = meta.stuff_dataset_id_to_contiguous_id
    with open(os.path.join(root, "pred.json")) as f:
        pred = json.load(f)
    inputs, outputs = [], []
    for ann in pred["annotations"]:
        ids = read_panoptic_png(os.path.join(root, "pred", ann["file_name"]))
        stem = os.path.splitext(ann["file_name"])[0]
        inputs.append({"image_id": ann["image_id"], "height": ids.shape[0],
                       "width": ids.shape[1],
                       "file_name": os.path.join(root, "images", stem + ".jpg")})
        pan = np.zeros(ids.shape, np.int32) if encoding == "segments" else np.full(
            ids.shape, -1, np.int32)
        segs = []
        for k, seg in enumerate(ann["segments_info"]):
            isthing = seg["category_id"] in things
            cat = (things if isthing else stuff)[seg["category_id"]]
            if encoding == "segments":
                pan[ids == seg["id"]] = k + 1
                segs.append({"id": k + 1, "category_id": cat, "isthing": isthing,
                             "score": 0.5, "instance_id": k})
            else:
                pan[ids == seg["id"]] = cat * LABEL_DIVISOR + (k + 1 if isthing else 0)
        outputs.append({"panoptic_seg": (torch.from_numpy(pan),
                                         segs if encoding == "segments" else None)})
    return inputs, outputs


def run_evaluator(evaluator, inputs, outputs, batch=2):
    evaluator.reset()
    for i in range(0, len(inputs), batch):
        evaluator.process(inputs[i:i + batch], outputs[i:i + batch])
    return evaluator.evaluate()


def detectron2_results(name, inputs, outputs, tmp):
    """Detectron2's evaluator on a deep copy (it pops keys and shifts maps in place)."""
    outputs = [{"panoptic_seg": (o["panoptic_seg"][0].clone(),
                                 copy.deepcopy(o["panoptic_seg"][1]))} for o in outputs]
    return run_evaluator(COCOPanopticEvaluator(name, output_dir=str(tmp)), inputs, outputs)


def assert_same_summary(ours, ref, tol=1e-7):
    assert list(ours) == ["panoptic_seg"]
    for key in SUMMARY_KEYS:
        assert abs(ours["panoptic_seg"][key] - ref["panoptic_seg"][key]) <= tol, key


@pytest.mark.parametrize(
    "separated,encoding",
    [(False, "segments"), (True, "segments"), (False, "divisor")],
    ids=["standard", "separated", "label-divisor"],
)
def test_matches_detectron2_and_panopticapi(tmp_path, separated, encoding):
    name = make_dataset(tmp_path, separated=separated)
    if encoding == "divisor":
        MetadataCatalog.get(name).label_divisor = LABEL_DIVISOR
    inputs, outputs = model_io(str(tmp_path), name, encoding)
    before = [(o["panoptic_seg"][0].clone(), copy.deepcopy(o["panoptic_seg"][1]))
              for o in outputs]

    out_dir = tmp_path / "ours"
    evaluator = PanopticEvaluator(name, output_dir=str(out_dir), save_panoptic=True)
    ours = run_evaluator(evaluator, inputs, outputs, batch=3)
    for (img, segs), o in zip(before, outputs, strict=True):  # outputs left untouched
        assert torch.equal(img, o["panoptic_seg"][0]) and segs == o["panoptic_seg"][1]

    ref = detectron2_results(name, inputs, outputs, tmp_path / "d2")
    assert_same_summary(ours, ref)

    # the saved submission evaluates (with panopticapi) to exactly our per-class numbers
    meta = MetadataCatalog.get(name)
    api = quiet(reference_pq_compute, meta.panoptic_json, str(out_dir / "predictions.json"))
    for cat, r in api["per_class"].items():
        cat_name = evaluator.ground_truth.categories[cat]["name"]
        for k in ("pq", "sq", "rq"):
            assert abs(evaluator.last_results["per_class"][cat][k] - r[k]) <= 1e-9
            assert abs(ours["panoptic_seg"][f"{k.upper()}/{cat_name}"] - 100 * r[k]) <= 1e-7
    for group in ("All", "Things", "Stuff"):
        assert evaluator.last_results[group]["n"] == api[group]["n"]
    assert evaluator.timing["images"] == len(inputs)


def test_without_saving_writes_nothing_and_resets(tmp_path):
    name = make_dataset(tmp_path)
    inputs, outputs = model_io(str(tmp_path), name)
    evaluator = PanopticEvaluator(name, output_dir=str(tmp_path / "out"))
    first = run_evaluator(evaluator, inputs, outputs)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    second = run_evaluator(evaluator, inputs, outputs)  # reset() clears the stats
    assert first == second
    # a repeated image is counted once, as panopticapi keys predictions by image id
    evaluator.reset()
    evaluator.process(inputs, outputs)
    evaluator.process(inputs[:2], outputs[:2])
    assert evaluator.evaluate() == first


def test_saving_checks_its_folder_and_never_leaves_a_stale_predictions_json(tmp_path):
    name = make_dataset(tmp_path)
    inputs, outputs = model_io(str(tmp_path), name)
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match=f"TEST.SAVE_PREDICTIONS: cannot create the folder "
                                      f"{tmp_path}/file/predictions"):
        PanopticEvaluator(name, output_dir=str(tmp_path / "file"), save_panoptic=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text('{"annotations": []}')  # an earlier run's
    evaluator = PanopticEvaluator(name, output_dir=str(out), save_panoptic=True)
    evaluator.reset()
    evaluator.process(inputs[:2], outputs[:2])  # a crash here leaves no predictions.json
    assert not (out / "predictions.json").exists()
    evaluator.evaluate()
    assert len(json.loads((out / "predictions.json").read_text())["annotations"]) == 2


def test_partial_evaluation_and_errors(tmp_path):
    name = make_dataset(tmp_path)
    inputs, outputs = model_io(str(tmp_path), name)
    evaluator = PanopticEvaluator(name)
    evaluator.process(inputs[:3], outputs[:3])
    assert set(evaluator.evaluate()["panoptic_seg"]) >= set(SUMMARY_KEYS)

    evaluator.reset()
    img, segs = outputs[0]["panoptic_seg"]
    bad_size = [{"panoptic_seg": (img[:-1], segs)}]
    with pytest.raises(PanopticFormatError, match=str(inputs[0]["image_id"])):
        evaluator.process(inputs[:1], bad_size)
    bad_cat = [{"panoptic_seg": (img, [dict(segs[0], category_id=999), *segs[1:]])}]
    with pytest.raises(PanopticFormatError, match="segment with ID 1 has .*category_id 999"):
        evaluator.process(inputs[:1], bad_cat)
    missing = [{"panoptic_seg": (img, segs[1:])}]
    with pytest.raises(PanopticFormatError, match="segment with ID 1 is presented in PNG"):
        evaluator.process(inputs[:1], missing)
    unknown_image = [dict(inputs[0], image_id=-5, file_name="nowhere/none.jpg")]
    with pytest.raises(PanopticFormatError, match="no ground truth"):
        evaluator.process(unknown_image, outputs[:1])
    with pytest.raises(ValueError, match="output_dir"):
        PanopticEvaluator(name, save_panoptic=True)


def test_file_name_fallback(tmp_path):
    """An input whose image_id is unknown is matched by its file name stem."""
    name = make_dataset(tmp_path)
    inputs, outputs = model_io(str(tmp_path), name)
    evaluator = PanopticEvaluator(name)
    ref = run_evaluator(evaluator, inputs, outputs)
    renamed = [dict(x, image_id=str(x["image_id"]) + "x") for x in inputs]
    assert run_evaluator(evaluator, renamed, outputs) == ref


# ----------------------------------------------------------------------------- 2 processes


def _distributed_worker(rank, world_size, root, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        name = make_dataset(root, name="pq_dist")
        inputs, outputs = model_io(root, name)
        evaluator = PanopticEvaluator(name)
        mine = [k for k in range(len(inputs)) if k % world_size == rank]
        res = run_evaluator(evaluator, [inputs[k] for k in mine], [outputs[k] for k in mine])
        if rank == 0:
            with open(result_file, "w") as f:
                json.dump({"res": res, "images": evaluator.timing["images"]}, f)
        else:
            assert res is None
        # tear down only once both ranks are done: a rank that leaves while the other still
        # talks to it makes gloo abort the other process at exit
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    name = make_dataset(tmp_path, n_images=9)
    inputs, outputs = model_io(str(tmp_path), name)
    single = run_evaluator(PanopticEvaluator(name), inputs, outputs)

    result_file = tmp_path / "dist.json"
    mp.spawn(_distributed_worker, nprocs=2,
             args=(2, str(tmp_path), str(tmp_path / "init"), str(result_file)), join=True)
    got = json.load(open(result_file))
    assert got["images"] == 5  # rank 0 processed its own share only
    assert got["res"]["panoptic_seg"].keys() == single["panoptic_seg"].keys()
    for key, value in single["panoptic_seg"].items():
        assert abs(got["res"]["panoptic_seg"][key] - value) <= 1e-9, key
