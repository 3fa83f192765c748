import json
import os
import shutil
import sys

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from panoptic_ext import add_panoptic_config
from panoptic_ext.data import cityscapes as cs
from panoptic_ext.data.augment import PanopticDatasetMapper
from panoptic_ext.formats import PanopticFormatError
from tests.helpers.cityscapes import write_cityscapes_tree
from tests.helpers.data import load_script

SEP = "cityscapes_fine_panoptic_{}_separated"


def test_categories_are_cityscapesscripts_evaluated_labels():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    theirs = [{"id": lb.id, "name": lb.name, "isthing": int(lb.hasInstances),
               "color": list(lb.color), "supercategory": lb.category}
              for lb in labels.labels if not lb.ignoreInEval]
    assert list(cs.CITYSCAPES_CATEGORIES) == theirs
    train_ids = [lb.trainId for lb in labels.labels if not lb.ignoreInEval]
    assert train_ids == list(range(19))  # label-id order is Cityscapes' trainId order


def test_registered_metadata_keeps_detectron2_names():
    meta = MetadataCatalog.get(SEP.format("train"))
    assert meta.thing_classes == ["person", "rider", "car", "truck", "bus", "train",
                                  "motorcycle", "bicycle"]
    assert meta.stuff_classes == ["things", "road", "sidewalk", "building", "wall", "fence",
                                  "pole", "traffic light", "traffic sign", "vegetation",
                                  "terrain", "sky"]
    assert meta.thing_dataset_id_to_contiguous_id == {24: 0, 25: 1, 26: 2, 27: 3, 28: 4,
                                                      31: 5, 32: 6, 33: 7}
    assert meta.stuff_dataset_id_to_contiguous_id[23] == 11
    assert meta.stuff_dataset_id_to_contiguous_id[0] == 0
    assert meta.thing_colors[2] == [0, 0, 142] and meta.stuff_colors[1] == [128, 64, 128]
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
    assert meta.mask_format == "bitmask"
    assert meta.cityscapes_eval is True and meta.gt_dir.endswith("gtFine/train")
    assert meta.panoptic_json.endswith("gtFine/cityscapes_panoptic_train.json")
    # Detectron2's Panoptic-DeepLab registration is untouched (19 contiguous classes).
    plain = MetadataCatalog.get("cityscapes_fine_panoptic_train")
    assert len(plain.thing_classes) == 19
    assert plain.thing_dataset_id_to_contiguous_id[24] == 11


def test_image_name_quirk():
    assert cs.cityscapes_image_file("/x", "aachen_000000_000019") == \
        "/x/aachen/aachen_000000_000019_leftImg8bit.png"


def test_missing_files_name_the_script(tmp_path):
    cs.register_cityscapes_panoptic(tmp_path)
    try:
        with pytest.raises(FileNotFoundError, match="prepare_cityscapes_panoptic.py"):
            DatasetCatalog.get(SEP.format("val"))
    finally:
        cs.register_cityscapes_panoptic()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    write_cityscapes_tree(root)
    assert load_script("prepare_cityscapes_panoptic").main(
        ["--root", str(root), "--workers", "2"]) == 0
    return root


@pytest.fixture
def registered(prepared):
    cs.register_cityscapes_panoptic(prepared)
    yield prepared
    cs.register_cityscapes_panoptic()


def test_prepare_writes_cityscapesscripts_and_derived_files(prepared):
    gt = prepared / "cityscapes" / "gtFine"
    data = json.loads((gt / "cityscapes_panoptic_train.json").read_text())
    assert [i["id"] for i in data["images"]] == [
        "aachen_000000_000019", "aachen_000001_000020",
        "bochum_000000_000019", "bochum_000001_000020"]
    assert len(os.listdir(gt / "cityscapes_panoptic_train")) == 4
    derived = gt / "cityscapes_panoptic_val_panoptic_ext" / "cityscapes_panoptic_val"
    assert (derived / "instances.json").is_file()
    assert len(os.listdir(derived / "panoptic_stuff")) == 2


def test_separated_dicts(registered):
    dicts = DatasetCatalog.get(SEP.format("train"))
    assert len(dicts) == 4
    d = dicts[0]
    assert d["file_name"].endswith("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    assert os.path.isfile(d["file_name"]) and d["image_id"] == "aachen_000000_000019"
    anns = sorted((a["category_id"], a["iscrowd"]) for a in d["annotations"])
    assert anns == [(0, 0), (2, 0), (2, 1)]  # person, car, a crowd of cars
    sem = np.array(Image.open(d["sem_seg_file_name"]))
    assert sem.shape == (64, 128)
    # things 0, road 1, building 3, sky 11, void 255 (the ego vehicle is ignoreInEval)
    assert set(np.unique(sem).tolist()) == {0, 1, 3, 11, 255}
    assert sem[62, 5] == 255 and sem[5, 5] == 11 and sem[25, 85] == 0


def test_crop_mapper_on_cityscapes(registered):
    cfg = add_panoptic_config(get_cfg())
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 256
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", [32, 64]
    mapper = PanopticDatasetMapper(cfg, True)
    d = DatasetCatalog.get(SEP.format("train"))[0]
    out = mapper(d)
    assert tuple(out["image"].shape[1:]) == (32, 64) == tuple(out["sem_seg"].shape)
    masks = out["instances"].gt_masks.tensor
    assert masks.shape[1:] == (32, 64) and all(m.any() for m in masks)


def test_rerun_skips_and_refreshes_one(prepared, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root, copy_function=shutil.copy2)
    # The copy's PNGs are up to date; the derived files record their source paths: rebuilt.
    report = cs.prepare_cityscapes_panoptic(root, workers=1, progress=False)
    assert report["val"]["converted"] == 0
    report = cs.prepare_cityscapes_panoptic(root, workers=1, progress=False)
    assert report["train"] == {"converted": 0, "up_to_date": 4, "derived": False}
    src = root / "cityscapes/gtFine/train/bochum/bochum_000000_000019_gtFine_instanceIds.png"
    st = os.stat(src)
    os.utime(src, (st.st_atime + 100, st.st_mtime + 100))
    report = cs.prepare_cityscapes_panoptic(root, ["train"], workers=1, progress=False)
    assert report["train"] == {"converted": 1, "up_to_date": 3, "derived": True}


def test_missing_split_is_reported(tmp_path, capsys):
    write_cityscapes_tree(tmp_path, splits=("val",), per_city=1)
    script = load_script("prepare_cityscapes_panoptic")
    assert script.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "train: not found" in out and "val: 1 images" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert script.main(["--root", str(empty)]) == 1


def test_half_a_split_is_an_error(tmp_path):
    write_cityscapes_tree(tmp_path, splits=("val",), per_city=1)
    shutil.rmtree(tmp_path / "cityscapes" / "leftImg8bit")
    with pytest.raises(FileNotFoundError, match="leftImg8bit/val"):
        cs.prepare_cityscapes_panoptic(tmp_path, ["val"], workers=1, progress=False)


def test_missing_image_of_a_frame_is_an_error(tmp_path, capsys):
    files = write_cityscapes_tree(tmp_path, splits=("val",), per_city=2)
    image = cs.cityscapes_image_file(str(tmp_path / "cityscapes/leftImg8bit/val"),
                                     files[1].name.replace("_gtFine_instanceIds.png", ""))
    os.remove(image)
    script = load_script("prepare_cityscapes_panoptic")
    assert script.main(["--root", str(tmp_path), "--splits", "val", "--workers", "1"]) == 2
    assert f"1 gtFine frame(s) have no image: {image} (for {files[1]})" in \
        capsys.readouterr().err


def test_unreadable_file_is_named(tmp_path, capsys):
    files = write_cityscapes_tree(tmp_path, splits=("val",), per_city=2)
    files[1].write_bytes(b"not a png")
    with pytest.raises(PanopticFormatError, match=files[1].name):
        cs.prepare_cityscapes_panoptic(tmp_path, ["val"], workers=1, progress=False)
    script = load_script("prepare_cityscapes_panoptic")
    assert script.main(["--root", str(tmp_path), "--splits", "val", "--workers", "1"]) == 2
    assert str(files[1]) in capsys.readouterr().err


def test_missing_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cityscapesscripts", None)
    monkeypatch.setitem(sys.modules, "cityscapesscripts.preparation", None)
    monkeypatch.setitem(sys.modules, "cityscapesscripts.preparation.createPanopticImgs", None)
    with pytest.raises(ImportError, match="cityscapesscripts==2.3.0"):
        cs.prepare_cityscapes_panoptic(tmp_path)


def test_parallel_conversion_matches_serial(prepared, tmp_path, monkeypatch):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root, copy_function=shutil.copy2)
    monkeypatch.setattr(cs, "_CHUNK", 1)  # one task per file, so two workers share them
    report = cs.prepare_cityscapes_panoptic(root, ["train"], workers=2, force=True,
                                            progress=False)
    assert report["train"]["converted"] == 4
    name = "cityscapes/gtFine/cityscapes_panoptic_train.json"
    assert json.loads((root / name).read_text()) == json.loads((prepared / name).read_text())
    png = "cityscapes/gtFine/cityscapes_panoptic_train/bochum_000001_000020_gtFine_panoptic.png"
    assert np.array_equal(np.array(Image.open(root / png)), np.array(Image.open(prepared / png)))


def test_heads_follow_the_prepared_dataset(registered):
    from panoptic_ext.data.custom.folder import get_panoptic_folder

    folder = get_panoptic_folder(SEP.format("train"))
    assert len(folder.things) == 8 and len(folder.stuff) == 11
