"""The one config setup: a config.yaml written by a run works with every tool, and a dataset
whose categories are unknown is an error naming the key."""

import argparse
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from panoptic_ext.data import synthetic_split_paths
from panoptic_ext.engine import panoptic_metadata, setup_cfg
from tests.helpers.tools import COCO_1X, CONFIG


def _spec(root, name, split):
    p = synthetic_split_paths(root, split)
    return f"{name}:{p['image_root']}:{p['panoptic_json']}:{p['panoptic_root']}"


def test_saved_config_registers_its_folders_again(pristine, tmp_path):
    cfg = setup_cfg(COCO_1X, ["DATASETS.TEST", "('setup_val_separated',)"],
                    datasets=[_spec(pristine, "setup_val", "val")], eval_only=True)
    assert cfg.is_frozen()
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3  # synthetic: 3 thing, 3 stuff classes
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 4
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.dump())
    for name in ("setup_val", "setup_val_separated"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    again = setup_cfg(str(saved))  # what demo, tune and export do with a run's config.yaml
    assert "setup_val_separated" in DatasetCatalog.list()
    meta = panoptic_metadata(again)
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert again.MODEL.ROI_HEADS.NUM_CLASSES == 3


def test_command_line_heads_win_over_the_dataset(pristine):
    cfg = setup_cfg(COCO_1X, ["DATASETS.TEST", "('setup_cl_separated',)",
                              "MODEL.ROI_HEADS.NUM_CLASSES", "5"],
                    datasets=[_spec(pristine, "setup_cl", "val")], eval_only=True)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 4


def test_namespace_is_the_training_setup(tmp_path):
    args = argparse.Namespace(config_file=CONFIG, opts=["OUTPUT_DIR", str(tmp_path)],
                              eval_only=True, dataset=[], resume=False, num_gpus=1)
    cfg = setup_cfg(args)
    assert (tmp_path / "config.yaml").is_file()  # default_setup ran
    assert cfg.OUTPUT_DIR == str(tmp_path)


def test_unregistered_test_dataset_names_the_key():
    cfg = setup_cfg(CONFIG, ["DATASETS.TEST", "('synthetic_panoptic_vla_separated',)"])
    with pytest.raises(KeyError, match="DATASETS.TEST") as e:
        panoptic_metadata(cfg)
    assert "synthetic_panoptic_val_separated" in str(e.value)  # the close match is offered


def test_empty_test_datasets_name_the_key():
    cfg = setup_cfg(CONFIG, ["DATASETS.TEST", "()"])
    with pytest.raises(ValueError, match=r"DATASETS.TEST is empty"):
        panoptic_metadata(cfg)


def test_dataset_without_categories_is_refused():
    name = "setup_no_categories"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, list)
    cfg = setup_cfg(CONFIG, ["DATASETS.TEST", f"('{name}',)"])
    with pytest.raises(KeyError, match="thing_classes, stuff_classes"):
        panoptic_metadata(cfg)


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        setup_cfg(os.path.join(tmp_path, "nope.yaml"))
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        setup_cfg(CONFIG, ["MODEL.DEVICE"])
