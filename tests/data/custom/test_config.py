"""configure_panoptic_folders fits any base config to the folders it trains on: head sizes,
the stuff-only placeholder, and the mask format of the derived (RLE) instance masks."""


import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog

from panoptic_ext import add_panoptic_config
from panoptic_ext.data import build_train_loader, register_panoptic_dataset
from panoptic_ext.data.custom import NO_THING_CLASS, configure_panoptic_folders
from tests.helpers.tools import COCO_1X


def _spec(name, paths):
    return ":".join([name, *paths])


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
        notes = configure_panoptic_folders(cfg, opts=["MODEL.ROI_HEADS.NUM_CLASSES", "5"])
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80  # named on the command line: kept
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 1
        assert any("NUM_CLASSES=80 from the command line" in n for n in notes)


def test_specs_are_recorded_with_absolute_paths(folders):
    cfg = add_panoptic_config(get_cfg())
    spec = _spec("rec_val", folders["full"]["val"])
    configure_panoptic_folders(cfg, [spec, spec])
    assert cfg.DATASETS.PANOPTIC_FOLDERS == [spec]  # de-duplicated; paths already absolute
    assert "rec_val_separated" in DatasetCatalog.list()
    assert configure_panoptic_folders(cfg) == []  # nothing trains on it: no edit, no note


def test_mixed_category_sets_are_refused(folders):
    cfg = add_panoptic_config(get_cfg())
    specs = [_spec("mix_full", folders["full"]["val"]),
             _spec("mix_things", folders["thingsonly"]["val"])]
    cfg.DATASETS.TRAIN = ("mix_full_separated", "mix_things_separated")
    with pytest.raises(ValueError, match="DATASETS.TRAIN mixes 'mix_full_separated'"):
        configure_panoptic_folders(cfg, specs)


@pytest.fixture
def coco_1x(folders):
    """The COCO 1x config (polygon masks, Detectron2's default) training on a folder."""
    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(COCO_1X)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2",
                         "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(64,)",
                         "INPUT.MAX_SIZE_TRAIN", "64",
                         "DATASETS.TRAIN", "('coco_base_separated',)"])
    assert cfg.INPUT.MASK_FORMAT == "polygon"
    return cfg, [_spec("coco_base", folders["full"]["train"])]


def test_polygon_mask_format_becomes_bitmask(coco_1x):
    cfg, specs = coco_1x
    notes = configure_panoptic_folders(cfg, specs)
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert any(n.startswith("INPUT.MASK_FORMAT: polygon -> bitmask") for n in notes), notes
    assert not any("command line" in n for n in notes if "MASK_FORMAT" in n)  # info, no warning
    # The derived RLE masks really need it: Detectron2's polygon path refuses them.
    d = DatasetCatalog.get("coco_base_separated")[0]
    polygon = cfg.clone()
    polygon.INPUT.MASK_FORMAT = "polygon"
    with pytest.raises(ValueError, match="mask_format=='polygon'"):
        DatasetMapper(polygon, True)(d)
    batch = next(iter(build_train_loader(cfg)))  # the first batch, which used to fail
    assert len(batch) == 2 and all(s["instances"].has("gt_masks") for s in batch)


def test_polygon_from_the_command_line_is_refused(coco_1x):
    cfg, specs = coco_1x
    opts = ["INPUT.MASK_FORMAT", "polygon"]
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT bitmask") as info:
        configure_panoptic_folders(cfg, specs, opts=opts)
    assert "RLE" in str(info.value) and "coco_base_separated" in str(info.value)
    cfg.INPUT.MASK_FORMAT = "polygon"
    # Evaluating only: no instance mask is read, so the choice stands.
    cfg.DATASETS.TEST = ("coco_base_separated",)
    configure_panoptic_folders(cfg, opts=opts, eval_only=True)
    assert cfg.INPUT.MASK_FORMAT == "polygon"


def test_builtin_synthetic_data_also_switches_to_bitmask(coco_1x):
    """The rule follows the dataset's metadata (RLE masks), not where it was registered."""
    cfg, _ = coco_1x
    cfg.DATASETS.TRAIN = ("synthetic_panoptic_train_separated",)
    notes = configure_panoptic_folders(cfg)
    assert cfg.INPUT.MASK_FORMAT == "bitmask"
    assert any("synthetic_panoptic_train_separated" in n for n in notes), notes
    cfg.INPUT.MASK_FORMAT = "polygon"
    cfg.DATASETS.TRAIN = ("coco_2017_train_panoptic_separated",)  # COCO's polygons: kept
    assert configure_panoptic_folders(cfg) == []
    assert cfg.INPUT.MASK_FORMAT == "polygon"
