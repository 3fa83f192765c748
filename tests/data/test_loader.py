"""The training loader: bad samples ("error" names the file, "skip" keeps training and counts),
the resumable sampler, and the pre-training checks."""

import itertools
import logging
import os

import pytest
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage
from PIL import Image

from panoptic_ext import add_panoptic_config
from panoptic_ext.data import (
    BadSampleError,
    SafeDatasetMapper,
    SkippedSamplesHook,
    build_train_loader,
    check_dataset_names,
    validate_cfg_datasets,
)
from panoptic_ext.data.loader import INDEX_KEY, SKIPPED_KEY, ResumableTrainingSampler
from tests.helpers.data import truncate
from tests.helpers.tools import CONFIGS

TRAIN = "synthetic_panoptic_train_separated"


@pytest.fixture
def cfg():
    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(os.path.join(CONFIGS, "Synthetic", "panoptic_fpn_R_50.yaml"))
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    return cfg


def test_error_mode_names_image_and_index(data, cfg):
    bad = data / "train" / "000000000002.jpg"
    truncate(bad)
    it = iter(build_train_loader(cfg))
    with pytest.raises(BadSampleError) as info:
        for _ in range(3):  # the first 4 samples are a permutation of all 4 images
            next(it)
    msg = str(info.value)
    assert f"image file {bad} (dataset dict #1)" in msg and "truncated" in msg
    assert "DATALOADER.ON_BAD_SAMPLE" in msg


def test_error_mode_names_stuff_png(data, cfg):
    bad = data / "panoptic_stuff_train" / "000000000004.png"
    truncate(bad)
    it = iter(build_train_loader(cfg))
    with pytest.raises(BadSampleError, match=f"sem_seg file {bad} \\(dataset dict #3\\)"):
        for _ in range(3):
            next(it)


def test_skip_mode_keeps_yielding_and_counts_across_workers(data, cfg):
    truncate(data / "train" / "000000000003.jpg")
    cfg.DATALOADER.ON_BAD_SAMPLE = "skip"
    cfg.DATALOADER.NUM_WORKERS = 1  # the count must cross from the worker process
    loader = build_train_loader(cfg)
    it = iter(loader)
    batches = [next(it) for _ in range(4)]
    samples = [s for b in batches for s in b]
    assert [len(b) for b in batches] == [2, 2, 2, 2]
    assert all(s["file_name"].endswith(".jpg") and "image" in s for s in samples)
    assert not any(SKIPPED_KEY in s or INDEX_KEY in s for s in samples)
    assert not any(s["file_name"].endswith("000000000003.jpg") for s in samples)
    # 8 samples = 2 sampler epochs over 4 images, each drew the bad image once.
    assert loader.num_skipped == 2

    class FakeTrainer:
        iter = 7
        storage = EventStorage()

    hook = SkippedSamplesHook(loader)
    hook.trainer = FakeTrainer()
    hook.before_train()
    hook.after_step()
    assert FakeTrainer.storage.latest()["data/skipped_samples"][0] == 2


def test_safe_mapper_skip_logs_file_and_reports_with_next_sample(data, caplog):
    def read(d):
        with Image.open(d["file_name"]) as img:
            img.load()
        return {"file_name": d["file_name"]}

    bad, good = data / "train" / "000000000001.jpg", data / "train" / "000000000002.jpg"
    truncate(bad)
    mapper = SafeDatasetMapper(read, "skip")
    with caplog.at_level(logging.WARNING, logger="panoptic_ext.data.loader"):
        assert mapper({"file_name": str(bad), INDEX_KEY: 0}) is None
    assert f"Skipping image file {bad} (dataset dict #0)" in caplog.text
    assert mapper({"file_name": str(good), INDEX_KEY: 1}) == {
        "file_name": str(good),
        SKIPPED_KEY: 1,
    }
    assert mapper({"file_name": str(good)}) == {"file_name": str(good)}
    assert mapper.num_skipped == 1


def test_safe_mapper_gives_up_when_everything_fails(data):
    truncate(data / "train" / "000000000001.jpg")

    def fail(d):
        raise OSError("image file is truncated")

    mapper = SafeDatasetMapper(fail, "skip", max_consecutive_skips=3)
    path = str(data / "train" / "000000000001.jpg")
    assert mapper({"file_name": path}) is None and mapper({"file_name": path}) is None
    with pytest.raises(BadSampleError, match="3 samples in a row failed"):
        mapper({"file_name": path})


def test_bad_on_bad_sample_value_names_key(data, cfg):
    cfg.DATALOADER.ON_BAD_SAMPLE = "ignore"
    with pytest.raises(ValueError, match="DATALOADER.ON_BAD_SAMPLE='ignore'.*'error', 'skip'"):
        build_train_loader(cfg)


def test_check_dataset_names_names_key_and_close_match(cfg):
    cfg.DATASETS.TEST = ("synthetic_panoptic_vall_separated",)
    with pytest.raises(KeyError) as info:
        check_dataset_names(cfg)
    msg = str(info.value)
    assert "DATASETS.TEST contains 'synthetic_panoptic_vall_separated'" in msg
    assert "Did you mean 'synthetic_panoptic_val_separated'" in msg
    cfg.DATASETS.TEST = ()
    check_dataset_names(cfg)


def test_validate_cfg_datasets_follows_config(data, cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    report = validate_cfg_datasets(cfg, progress=False)
    assert report is not None and report.ok and report.num_samples == 6
    assert report.cache_file.startswith(str(tmp_path / "xdg" / "panoptic_ext" / "validate"))
    cfg.DATALOADER.VALIDATE = False
    assert validate_cfg_datasets(cfg) is None


def test_validate_cfg_datasets_reads_on_bad_area(data, cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg.DATALOADER.ON_BAD_AREA = "repair"
    with pytest.raises(ValueError, match="DATALOADER.ON_BAD_AREA='repair'"):
        validate_cfg_datasets(cfg, progress=False)


def test_resumable_sampler_continues_the_stream():
    full = ResumableTrainingSampler(10, seed=7)
    stream = list(itertools.islice(iter(full), 25))
    resumed = ResumableTrainingSampler(10, seed=7)
    resumed.skip = 13
    assert list(itertools.islice(iter(resumed), 12)) == stream[13:]
    resumed.seed = "7"  # a seed from a checkpoint's JSON
    assert resumed.seed == 7


def test_training_set_without_segments_is_named(cfg):
    from detectron2.data import DatasetCatalog

    from panoptic_ext.data.loader import train_dataset_dicts

    crowd = {"bbox": [0, 0, 4, 4], "bbox_mode": 0, "category_id": 0, "iscrowd": 1}
    sets = {"no_segments": [{"file_name": f"{i}.jpg", "image_id": i, "annotations": [],
                             "segments_info": []} for i in range(3)],
            "crowd_only": [{"file_name": "c.jpg", "image_id": 0, "annotations": [crowd],
                            "segments_info": [{"id": 1, "category_id": 0, "iscrowd": 1}]}]}
    for name, dicts in sets.items():
        DatasetCatalog.register(name, lambda d=dicts: d)
    try:
        for flag in (True, False):
            cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = ("no_segments",), flag
            with pytest.raises(ValueError, match=r"\('no_segments',\) has no segment in any "
                                                 "of its 3 images"):
                train_dataset_dicts(cfg)
        cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = ("crowd_only",), True
        with pytest.raises(ValueError, match="no image left after filtering.*FILTER_EMPTY"):
            train_dataset_dicts(cfg)
        cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
        assert len(train_dataset_dicts(cfg)) == 1
    finally:
        for name in sets:
            DatasetCatalog.remove(name)
