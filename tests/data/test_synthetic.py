"""The synthetic generator writes consistent COCO files, deterministically, and never clobbers."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from panoptic_ext.data import (
    SYNTHETIC_CATEGORIES,
    SyntheticDatasetMismatch,
    generate_synthetic_dataset,
    render_sample,
    rgb_to_id,
    synthetic_metadata,
)
from panoptic_ext.data.synthetic import MIN_SEGMENT_AREA
from tests.helpers.data import load_script

CATS = {c["id"]: c for c in SYNTHETIC_CATEGORIES}
THING_IDS = {c["id"] for c in SYNTHETIC_CATEGORIES if c["isthing"]}
STUFF_IDS = sorted(c["id"] for c in SYNTHETIC_CATEGORIES if not c["isthing"])
PARAMS = dict(seed=3, num_train=8, num_val=3, size=64)


def _all_files(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = fh.read()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    path, written = generate_synthetic_dataset(root, workers=2, progress=False, **PARAMS)
    assert written
    return path


def test_categories_are_non_contiguous_with_things_and_stuff():
    ids = [c["id"] for c in SYNTHETIC_CATEGORIES]
    assert ids != list(range(1, len(ids) + 1))
    assert len(THING_IDS) == 3 and len(STUFF_IDS) == 3
    meta = synthetic_metadata("separated")
    assert meta["stuff_classes"][0] == "things"
    assert meta["stuff_dataset_id_to_contiguous_id"] == {0: 0, 7: 1, 8: 2, 10: 3}
    assert meta["thing_dataset_id_to_contiguous_id"] == {1: 0, 3: 1, 5: 2}
    assert synthetic_metadata("standard")["stuff_dataset_id_to_contiguous_id"] == {
        7: 3,
        8: 4,
        10: 5,
    }
    with pytest.raises(ValueError, match="style"):
        synthetic_metadata("bogus")


def test_determinism_independent_of_workers(dataset, tmp_path):
    again, _ = generate_synthetic_dataset(tmp_path / "a", workers=1, progress=False, **PARAMS)
    assert _all_files(again) == _all_files(dataset)
    assert not [f for f in _all_files(dataset) if f.endswith(".tmp")], "atomic writes leave none"
    other, _ = generate_synthetic_dataset(
        tmp_path / "b", workers=1, progress=False, **{**PARAMS, "seed": 4}
    )
    a, b = _all_files(other), _all_files(dataset)
    assert a.keys() == b.keys()
    assert a["panoptic_train.json"] != b["panoptic_train.json"]


def test_render_sample_properties():
    saw_void = saw_multi = False
    for i in range(40):
        s = render_sample(0, "train", i, 96)
        assert s.image.shape == (96, 96, 3) and s.image.dtype == np.uint8
        things = [x for x in s.segments if x["category_id"] in THING_IDS]
        stuff = [x["category_id"] for x in s.segments if x["category_id"] not in THING_IDS]
        assert things, "every image needs an instance (Detectron2 filters empty ones)"
        assert len(stuff) == len(set(stuff)), "one segment per stuff class"
        assert all(x["area"] >= MIN_SEGMENT_AREA for x in s.segments)
        saw_void |= bool((s.panoptic == 0).any())
        saw_multi |= len(things) >= 3
    assert saw_void and saw_multi
    with pytest.raises(ValueError, match="split"):
        render_sample(0, "test", 0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_files_are_consistent(dataset, split):
    pan = json.loads((dataset / f"panoptic_{split}.json").read_text())
    inst = json.loads((dataset / f"instances_{split}.json").read_text())
    n = PARAMS[f"num_{split}"]
    assert len(pan["images"]) == len(pan["annotations"]) == n
    assert pan["categories"] == SYNTHETIC_CATEGORIES
    assert [c["id"] for c in inst["categories"]] == sorted(THING_IDS)
    assert inst["images"] == pan["images"]
    ann_ids = [a["id"] for a in inst["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    inst_by_image = {}
    for a in inst["annotations"]:
        inst_by_image.setdefault(a["image_id"], []).append(a)
    images = {im["id"]: im for im in pan["images"]}

    for ann in pan["annotations"]:
        im = images[ann["image_id"]]
        stem = os.path.splitext(im["file_name"])[0]
        assert ann["file_name"] == stem + ".png"
        with Image.open(dataset / split / im["file_name"]) as jpg:
            assert jpg.format == "JPEG" and jpg.mode == "RGB"
            assert jpg.size == (im["width"], im["height"]) == (PARAMS["size"],) * 2
        ids = rgb_to_id(np.array(Image.open(dataset / f"panoptic_{split}" / ann["file_name"])))
        sem = np.array(Image.open(dataset / f"panoptic_stuff_{split}" / ann["file_name"]))
        assert sem.dtype == np.uint8 and sem.shape == ids.shape
        segs = {s["id"]: s for s in ann["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segs), "PNG ids == JSON ids, both ways"

        expected_sem = np.full(ids.shape, 255, np.uint8)
        thing_masks = []
        for sid, s in segs.items():
            m = ids == sid
            assert s["area"] == int(m.sum())
            ys, xs = np.nonzero(m)
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            assert s["iscrowd"] == 0 and s["category_id"] in CATS
            if s["category_id"] in THING_IDS:
                expected_sem[m] = 0
                thing_masks.append((s, m))
            else:
                expected_sem[m] = STUFF_IDS.index(s["category_id"]) + 1
        np.testing.assert_array_equal(sem, expected_sem)

        insts = inst_by_image.get(ann["image_id"], [])
        assert len(insts) == len(thing_masks)
        for a, (s, m) in zip(insts, thing_masks, strict=True):
            assert isinstance(a["segmentation"]["counts"], str)
            decoded = mask_util.decode(a["segmentation"]).astype(bool)
            np.testing.assert_array_equal(decoded, m)
            assert a["category_id"] == s["category_id"] and a["area"] == s["area"]
            assert a["bbox"] == [float(v) for v in s["bbox"]] and a["iscrowd"] == 0


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="size"):
        generate_synthetic_dataset(tmp_path, size=16, progress=False)
    with pytest.raises(ValueError, match="num_val"):
        generate_synthetic_dataset(tmp_path, num_val=0, progress=False)
    assert not (tmp_path / "synthetic_panoptic").exists()


def test_script_stamp_and_force(tmp_path, capsys):
    script = load_script("prepare_synthetic")
    args = ["--root", str(tmp_path), "--num-train", "3", "--num-val", "2", "--size", "64"]
    assert script.main(args + ["--workers", "1"]) == 0
    dataset = tmp_path / "synthetic_panoptic"
    stamp = json.loads((dataset / "params.json").read_text())
    assert stamp["num_train"] == 3 and stamp["num_val"] == 2 and stamp["size"] == 64
    mtime = os.path.getmtime(dataset / "panoptic_train.json")
    capsys.readouterr()

    assert script.main(args) == 0
    assert "already up to date" in capsys.readouterr().out
    assert os.path.getmtime(dataset / "panoptic_train.json") == mtime

    assert script.main(args + ["--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "seed" in err
    assert json.loads((dataset / "params.json").read_text()) == stamp

    assert script.main(args + ["--seed", "1", "--force"]) == 0
    assert json.loads((dataset / "params.json").read_text())["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dir left behind"


def test_foreign_or_incomplete_folder_is_refused(tmp_path):
    dataset = tmp_path / "synthetic_panoptic"
    dataset.mkdir()
    (dataset / "mine.txt").write_text("keep me")
    with pytest.raises(SyntheticDatasetMismatch, match="params.json"):
        generate_synthetic_dataset(tmp_path, num_train=2, num_val=1, size=64, progress=False)
    assert (dataset / "mine.txt").read_text() == "keep me"

    kw = dict(num_train=2, num_val=1, size=64, progress=False, workers=1)
    generate_synthetic_dataset(tmp_path, force=True, **kw)
    next((dataset / "val").iterdir()).unlink()
    with pytest.raises(SyntheticDatasetMismatch, match="missing"):
        generate_synthetic_dataset(tmp_path, **kw)
