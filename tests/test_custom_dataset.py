"""Your own COCO-panoptic folder, from nothing but images + panoptic PNGs + JSON, to a trained and
evaluated model; with unusual category ids (things 7 and 1000, stuff 42 and 3)."""

import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from panoptic_ext import add_panoptic_config
from panoptic_ext.data import (
    PanopticFormatError,
    id_to_rgb,
    prepare_panoptic_dataset,
    register_panoptic_dataset,
    render_sample,
    validate_datasets,
)
from panoptic_ext.data.custom import (
    NO_THING_CLASS,
    configure_panoptic_folders,
    get_panoptic_folder,
)
from panoptic_ext.engine import HeadShapeMismatch, check_head_shapes

from .conftest import REPO
from .test_tools import CONFIG, FAST

SIZE = 64
# Synthetic category -> ours; square and triangle become one thing class, ground and water one
# stuff class (their segments are merged, as COCO has one segment per stuff class and image).
CATS = {
    7: {"id": 7, "name": "disc", "isthing": 1},  # no colour: one is made up
    1000: {"id": 1000, "name": "block", "isthing": 1, "color": [10, 200, 10]},
    42: {"id": 42, "name": "sky", "isthing": 0, "color": [130, 190, 240]},
    3: {"id": 3, "name": "land", "isthing": 0, "color": [120, 90, 60]},
}
REMAP = {1: 7, 3: 1000, 5: 1000, 7: 42, 8: 3, 10: 3}


def _write_folder(root, split, n, keep_things=True, keep_stuff=True):
    """COCO-panoptic folder: images/<split>/*.png, panoptic/<split>/*.png, <split>.json."""
    cats = [c for c in CATS.values() if (keep_things if c["isthing"] else keep_stuff)]
    img_dir, pan_dir = root / "images" / split, root / "panoptic" / split
    img_dir.mkdir(parents=True)
    pan_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        s = render_sample(5, "train" if split == "train" else "val", i, size=SIZE)
        pan = s.panoptic.copy()
        segments, stuff_seg = [], {}
        for seg in s.segments:
            cid = REMAP[seg["category_id"]]
            if not any(c["id"] == cid for c in cats):
                pan[pan == seg["id"]] = 0  # category dropped: void
                continue
            if not CATS[cid]["isthing"] and cid in stuff_seg:
                pan[pan == seg["id"]] = stuff_seg[cid]  # one segment per stuff class
                continue
            if not CATS[cid]["isthing"]:
                stuff_seg[cid] = seg["id"]
            segments.append({"id": seg["id"], "category_id": cid, "iscrowd": 0})
        for seg in segments:
            m = pan == seg["id"]
            ys, xs = np.nonzero(m)
            seg["area"] = int(m.sum())
            seg["bbox"] = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        image_id = 100 + i
        stem = f"{split}_{i:03d}"
        Image.fromarray(s.image).save(img_dir / f"{stem}.png")  # not .jpg on purpose
        Image.fromarray(id_to_rgb(pan)).save(pan_dir / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.png", "height": SIZE, "width": SIZE})
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                            "segments_info": segments})
    # Categories deliberately unsorted.
    data = {"images": images, "annotations": annotations, "categories": cats[::-1]}
    (root / f"{split}.json").write_text(json.dumps(data))
    return f"{root / 'images' / split}", f"{root / f'{split}.json'}", f"{root / 'panoptic' / split}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("mine")
    out = {}
    for kind, kw in (("full", {}), ("stuffonly", {"keep_things": False}),
                     ("thingsonly", {"keep_stuff": False})):
        root = base / kind
        root.mkdir()
        out[kind] = {split: _write_folder(root, split, n, **kw)
                     for split, n in (("train", 4), ("val", 2))}
    # One thing segment marked crowd, to see iscrowd carried over.
    path = out["full"]["train"][1]
    data = json.loads(open(path).read())
    segments = data["annotations"][0]["segments_info"]
    thing = next(s for s in segments if CATS[s["category_id"]]["isthing"])
    thing["iscrowd"] = 1
    open(path, "w").write(json.dumps(data))
    return out


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

    assert prepare_panoptic_dataset("mine_a") is False  # up to date
    png = os.path.join(pan_root, os.listdir(pan_root)[0])
    st = os.stat(png)
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert prepare_panoptic_dataset("mine_a") is True  # a source changed: rebuilt


def test_read_only_data_folder_uses_user_cache(folders, monkeypatch):
    image_root, pan_json, pan_root = folders["full"]["val"]
    real = os.makedirs

    def read_only(path, *args, **kwargs):  # tests run as root: chmod would not stop writes
        if "_panoptic_ext" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", read_only)
    register_panoptic_dataset("mine_ro", image_root, pan_json, pan_root)
    folder = get_panoptic_folder("mine_ro_separated")
    assert folder.cache.startswith(os.path.join(os.environ["XDG_CACHE_HOME"], "panoptic_ext"))
    # Lazy: the validation pass itself triggers the derivation.
    assert validate_datasets(["mine_ro_separated"], progress=False).num_samples == 2
    assert os.path.isfile(folder.instances_json)


@pytest.mark.parametrize("kind", ["stuffonly", "thingsonly"])
def test_stuff_only_and_things_only(folders, tmp_path, kind):
    image_root, pan_json, pan_root = folders[kind]["val"]
    register_panoptic_dataset(f"{kind}_x", image_root, pan_json, pan_root, cache_dir=tmp_path)
    meta = MetadataCatalog.get(f"{kind}_x_separated")
    dicts = DatasetCatalog.get(f"{kind}_x_separated")
    assert len(dicts) == 2 and len(DatasetCatalog.get(f"{kind}_x")) == 2
    n_anns = sum(len(d["annotations"]) for d in dicts)
    cfg = add_panoptic_config(get_cfg())
    cfg.DATASETS.TRAIN = (f"{kind}_x_separated",)
    if kind == "stuffonly":
        assert meta.thing_classes == [NO_THING_CLASS] and n_anns == 0
        assert meta.thing_dataset_id_to_contiguous_id == {}
        assert not hasattr(meta, "json_file")  # no box/mask AP without a thing class
        configure_panoptic_folders(cfg)
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1  # placeholder, never predicted:
        assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 1.0
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
    else:
        assert meta.stuff_classes == ["things"] and n_anns > 0
        configure_panoptic_folders(cfg, opts=["MODEL.ROI_HEADS.NUM_CLASSES", "5"])
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80  # named on the command line: kept
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 1


def test_segment_missing_from_png_is_named(folders, tmp_path):
    src = folders["full"]["val"]
    data = json.loads(open(src[1]).read())
    data["annotations"][1]["segments_info"].append({"id": 4242, "category_id": 1000})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    register_panoptic_dataset("mine_bad", src[0], bad, src[2], cache_dir=tmp_path)
    assert MetadataCatalog.get("mine_bad_separated").thing_classes == ["disc", "block"]
    with pytest.raises(PanopticFormatError) as e:
        DatasetCatalog.get("mine_bad_separated")
    msg = str(e.value)
    assert "image 101" in msg and "segment 4242" in msg and "'block'" in msg
    assert "val_001.png" in msg


def test_head_mismatch_named():
    heads = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(3, 8),
             "sem_seg_head.predictor.weight": torch.zeros(4, 8, 1, 1)}
    model = types.SimpleNamespace(state_dict=lambda: heads)
    ckpt = {"roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 8),
            "sem_seg_head.predictor.weight": torch.zeros(4, 8, 1, 1)}
    with pytest.raises(HeadShapeMismatch, match=r"cls_score.*80 thing classes.*2 thing"):
        check_head_shapes(model, ckpt, strict=True, dataset="mine")
    problems = check_head_shapes(model, ckpt)  # fine-tuning: a warning, no error
    assert len(problems) == 1 and "box classifier" in problems[0]


def _run(args, env, check=True):
    proc = subprocess.run([sys.executable, "tools/train_net.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def test_train_and_evaluate_from_the_command_line(folders, tmp_path):
    # Copy so the derived files land next to the data (the default), not in a shared cache.
    root = tmp_path / "data"
    shutil.copytree(os.path.dirname(folders["full"]["train"][1]), root)
    spec = {s: f"mine_{s}:{root}/images/{s}:{root}/{s}.json:{root}/panoptic/{s}"
            for s in ("train", "val")}
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = tmp_path / "out"
    _run(["--config-file", CONFIG, "--dataset", spec["train"], "--dataset", spec["val"], *FAST,
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
    proc = _run(["--config-file", CONFIG, "--eval-only",
                 "--dataset", f"things_val:{things[0]}:{things[1]}:{things[2]}", *FAST,
                 "DATASETS.TEST", "('things_val_separated',)",
                 "MODEL.WEIGHTS", str(out / "model_final.pth"),
                 "OUTPUT_DIR", str(tmp_path / "e")], env, check=False)
    assert proc.returncode != 0
    err = proc.stderr[-3000:]
    assert "HeadShapeMismatch" in err and "sem_seg_head.predictor" in err, err
    assert "3 semantic classes" in err and "1 semantic class " in err
    assert "cls_score" not in err  # same two thing classes: that head fits
