"""Your own COCO-panoptic folder, from nothing but images + panoptic PNGs + JSON, to registered
datasets, and to a trained and evaluated model from the command line; with unusual category ids
(things 7 and 1000, stuff 42 and 3)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from panoptic_ext.data import register_panoptic_dataset, validate_datasets
from panoptic_ext.data.custom import (
    FOLDER_SPEC,
    get_panoptic_folder,
    parse_folder_spec,
    register_panoptic_folders,
)
from tests.helpers.tools import CONFIG, FAST, run_tool


def test_register_metadata_now_files_on_first_load(folders, tmp_path):
    image_root, pan_json, pan_root = folders["full"]["train"]
    names = register_panoptic_dataset("mine_a", image_root, pan_json, pan_root,
                                      cache_dir=tmp_path / "cache")
    assert names == ["mine_a", "mine_a_separated"]
    sep = MetadataCatalog.get("mine_a_separated")
    assert sep.thing_classes == ["disc", "block"]  # sorted by id: 7, 1000
    assert sep.thing_dataset_id_to_contiguous_id == {7: 0, 1000: 1}
    assert sep.stuff_classes == ["things", "land", "sky"]  # 3, 42
    assert sep.stuff_dataset_id_to_contiguous_id == {0: 0, 3: 1, 42: 2}
    assert len(sep.thing_colors) == 2
    std = MetadataCatalog.get("mine_a")
    assert std.stuff_dataset_id_to_contiguous_id == {3: 0, 42: 2}
    folder = get_panoptic_folder("mine_a")
    assert get_panoptic_folder("mine_a_separated") is folder
    assert str(tmp_path / "cache") in folder.cache  # cache_dir given: used, not the data folder
    assert not os.path.exists(folder.instances_json)  # nothing derived yet

    dicts = DatasetCatalog.get("mine_a_separated")
    assert len(dicts) == 4 and all(d["file_name"].endswith(".png") for d in dicts)
    inst = json.loads(open(folder.instances_json).read())
    assert {c["id"] for c in inst["categories"]} == {7, 1000}
    anns = [a for d in dicts for a in d["annotations"]]
    assert {a["category_id"] for a in anns} <= {0, 1} and len(anns) == len(inst["annotations"])
    assert sum(a["iscrowd"] for a in anns) == 1
    for d in dicts:
        labels = set(np.unique(np.asarray(Image.open(d["sem_seg_file_name"]))).tolist())
        assert labels <= {0, 1, 2, 255}
    std_dicts = DatasetCatalog.get("mine_a")
    assert {s["isthing"] for d in std_dicts for s in d["segments_info"]} == {True, False}
    assert validate_datasets(["mine_a", "mine_a_separated"], progress=False).ok


def test_reregistering_replaces_and_unknown_name_lists_registered(folders, tmp_path):
    image_root, pan_json, pan_root = folders["full"]["val"]
    for _ in range(2):  # a second registration replaces the first, no assert from Detectron2
        register_panoptic_dataset("mine_twice", image_root, pan_json, pan_root, cache_dir=tmp_path)
    assert len(DatasetCatalog.get("mine_twice")) == 2
    with pytest.raises(KeyError, match="mine_twice_separated"):
        get_panoptic_folder("mine_thrice")


@pytest.mark.parametrize("name", ["", "a:b", "x_separated"])
def test_bad_names_are_refused(folders, name):
    with pytest.raises(ValueError, match="_separated"):
        register_panoptic_dataset(name, *folders["full"]["val"])


def test_missing_paths_name_the_spec_part(folders, tmp_path):
    image_root, pan_json, pan_root = folders["full"]["val"]
    with pytest.raises(FileNotFoundError, match="IMAGE_ROOT"):
        register_panoptic_dataset("m", tmp_path / "nope", pan_json, pan_root)
    with pytest.raises(FileNotFoundError, match="PANOPTIC_ROOT"):
        register_panoptic_dataset("m", image_root, pan_json, tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="PANOPTIC_JSON"):
        register_panoptic_dataset("m", image_root, tmp_path / "nope.json", pan_root)


def test_folder_spec_parsing_and_registration(folders, tmp_path):
    image_root, pan_json, pan_root = folders["full"]["val"]
    assert parse_folder_spec(" n : a : b.json : c ") == ("n", "a", "b.json", "c")
    with pytest.raises(ValueError, match=FOLDER_SPEC):
        parse_folder_spec("n:a:b.json")
    with pytest.raises(ValueError, match="four non-empty parts"):
        parse_folder_spec("n::b.json:c")
    names = register_panoptic_folders([f"spec_val:{image_root}:{pan_json}:{pan_root}"],
                                      cache_dir=tmp_path)
    assert names == ["spec_val", "spec_val_separated"]


def test_train_and_evaluate_from_the_command_line(folders, tmp_path):
    # Copy so the derived files land next to the data (the default), not in a shared cache.
    root = tmp_path / "data"
    shutil.copytree(os.path.dirname(folders["full"]["train"][1]), root)
    spec = {s: f"mine_{s}:{root}/images/{s}:{root}/{s}.json:{root}/panoptic/{s}"
            for s in ("train", "val")}
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = tmp_path / "out"
    run_tool(["tools/train_net.py", "--config-file", CONFIG, "--dataset", spec["train"],
              "--dataset", spec["val"], *FAST,
              "DATASETS.TRAIN", "('mine_train_separated',)",
              "DATASETS.TEST", "('mine_val_separated',)", "SOLVER.MAX_ITER", "2",
              "OUTPUT_DIR", str(out)], env)
    assert (root / "panoptic" / "train_panoptic_ext" / "train" / "instances.json").is_file()

    metrics = json.loads((out / "inference/mine_val_separated/metrics.json").read_text())
    pq = metrics["panoptic_seg"]
    per_class = {k.split("/", 1)[1] for k in pq if k.startswith("PQ/")}
    assert per_class == {"disc", "block", "sky", "land"}
    assert {"bbox", "segm", "sem_seg"} <= set(metrics)
    weights = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert weights["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3  # 2 things + bg
    assert weights["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 8
    assert weights["roi_heads.mask_head.predictor.weight"].shape[0] == 2
    assert weights["sem_seg_head.predictor.weight"].shape[0] == 3  # 2 stuff + "things"
    assert spec["train"] in (out / "config.yaml").read_text()  # the saved config reproduces it

    # Same model on the things-only folder: its semantic head (3 classes) does not fit (1).
    things = folders["thingsonly"]["val"]
    proc = run_tool(["tools/train_net.py", "--config-file", CONFIG, "--eval-only",
                     "--dataset", f"things_val:{things[0]}:{things[1]}:{things[2]}", *FAST,
                     "DATASETS.TEST", "('things_val_separated',)",
                     "MODEL.WEIGHTS", str(out / "model_final.pth"),
                     "OUTPUT_DIR", str(tmp_path / "e")], env, check=False)
    assert proc.returncode != 0
    err = proc.stderr[-3000:]
    assert "HeadShapeMismatch" in err and "sem_seg_head.predictor" in err, err
    assert "3 semantic classes" in err and "1 semantic class " in err
    assert "cls_score" not in err  # same two thing classes: that head fits
