"""Schedules in epochs: converted once from the filtered training set and the total batch,
saved as iterations (a run's config.yaml is used as it is, a resume keeps its schedule), and
the keys that cannot go together are named."""

import argparse

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer

from panoptic_ext.engine import schedule, setup_cfg
from panoptic_ext.engine.defaults import setup
from panoptic_ext.engine.schedule import epochs_to_iterations, resolve_epochs
from tests.helpers.tools import CONFIG

_NAME = "schedule_mixed"


def _dicts(n_empty: int, n_full: int) -> list[dict]:
    """n_empty images without annotations (Detectron2's FILTER_EMPTY_ANNOTATIONS drops them),
    then n_full with one box each."""
    ann = {"bbox": [0, 0, 4, 4], "bbox_mode": 0, "category_id": 0, "iscrowd": 0}
    return [{"file_name": f"{i}.jpg", "image_id": i, "height": 8, "width": 8,
             "annotations": [] if i < n_empty else [dict(ann)]}
            for i in range(n_empty + n_full)]


@pytest.fixture
def mixed():
    """A registered training set of 10 images, 3 of them without annotations."""
    sizes = {"empty": 3, "full": 7}
    DatasetCatalog.register(_NAME, lambda: _dicts(sizes["empty"], sizes["full"]))
    MetadataCatalog.get(_NAME).thing_classes = ["a"]
    yield sizes
    DatasetCatalog.remove(_NAME)
    MetadataCatalog.remove(_NAME)


def _opts(*extra):
    return ["DATASETS.TRAIN", f"('{_NAME}',)", "SOLVER.MAX_ITER", "0", "SOLVER.EPOCHS", "3",
            "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "True", *extra]


def test_epochs_count_the_images_left_after_filtering(mixed):
    kept = resolve_epochs(setup_cfg(CONFIG, _opts()))
    assert kept.is_frozen()
    assert kept.SOLVER.MAX_ITER == 11  # ceil(3 epochs * 7 images / batch 2)
    assert kept.SOLVER.EPOCHS_RESOLVED == "3 epochs = 11 iterations at batch 2 over 7 images"
    everything = resolve_epochs(setup_cfg(CONFIG, _opts(
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False")))
    assert everything.SOLVER.MAX_ITER == 15  # 3 * 10 / 2
    assert everything.SOLVER.EPOCHS == 3  # kept, to be seen in config.yaml


def test_twins_replace_their_iteration_keys_and_steps_keep_their_fractions(mixed):
    cfg = resolve_epochs(setup_cfg(CONFIG, _opts(
        "SOLVER.STEPS_EPOCHS", "(2, 2.5)", "SOLVER.WARMUP_EPOCHS", "0.5",
        "SOLVER.CHECKPOINT_PERIOD_EPOCHS", "1", "TEST.EVAL_PERIOD_EPOCHS", "2")))
    assert cfg.SOLVER.MAX_ITER == 11
    assert cfg.SOLVER.STEPS == (7, 9)  # nearest to 2 * 7 / 2 and 2.5 * 7 / 2 = 8.75
    assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD) == \
        (2, 4, 7)
    # No twins: the YAML's STEPS (171,) of MAX_ITER 216 stay at 171/216 of training, warmup
    # and periods stay in iterations.
    plain = setup_cfg(CONFIG, _opts())
    assert plain.SOLVER.STEPS_EPOCHS == (2.375,)
    plain = resolve_epochs(plain)
    assert plain.SOLVER.STEPS == (8,)  # 2.375 * 7 / 2 = 8.3
    assert (plain.SOLVER.WARMUP_ITERS, plain.SOLVER.CHECKPOINT_PERIOD) == (45, 40)


def test_conflicting_or_incomplete_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"SOLVER.EPOCHS 12 and SOLVER.MAX_ITER 216"):
        setup_cfg(CONFIG, ["SOLVER.EPOCHS", "12"])
    yaml = tmp_path / "epochs.yaml"  # a config in epochs that inherits iteration STEPS
    yaml.write_text(f"_BASE_: {CONFIG}\nSOLVER:\n  MAX_ITER: 0\n  EPOCHS: 12\n")
    with pytest.raises(ValueError, match=r"SOLVER.STEPS \(171,\).*SOLVER.STEPS_EPOCHS"):
        setup_cfg(str(yaml))
    assert setup_cfg(str(yaml), ["SOLVER.STEPS", "()"]).SOLVER.STEPS_EPOCHS == ()
    with pytest.raises(ValueError, match=r"SOLVER.STEPS_EPOCHS \(13,\)"):
        setup_cfg(str(yaml), ["SOLVER.STEPS_EPOCHS", "(13,)"])
    with pytest.raises(ValueError, match="SOLVER.WARMUP_EPOCHS"):
        setup_cfg(CONFIG, ["SOLVER.WARMUP_EPOCHS", "-1.0"])


def test_reference_world_size_rescales_the_converted_iterations(mixed):
    """IMS_PER_BATCH is the total batch: the conversion does not depend on the process
    count, and Detectron2's rescaling (applied after it by the trainer) keeps the epochs."""
    cfg = resolve_epochs(setup_cfg(CONFIG, _opts("SOLVER.IMS_PER_BATCH", "4",
                                                 "SOLVER.REFERENCE_WORLD_SIZE", "2")))
    assert cfg.SOLVER.MAX_ITER == epochs_to_iterations(3, 7, 4) == 6  # ceil(3 * 7 / 4)
    for world, batch, iters in ((4, 8, 3), (1, 2, 12)):
        scaled = DefaultTrainer.auto_scale_workers(cfg, world)
        assert (scaled.SOLVER.IMS_PER_BATCH, scaled.SOLVER.MAX_ITER) == (batch, iters)
        assert scaled.SOLVER.IMS_PER_BATCH * scaled.SOLVER.MAX_ITER >= 3 * 7 - 3  # ~3 epochs


def test_batch_not_divisible_by_the_reference_world_size_names_both_keys():
    cfg = setup_cfg(CONFIG, ["SOLVER.REFERENCE_WORLD_SIZE", "8", "SOLVER.IMS_PER_BATCH", "2"])
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH 2 is not a multiple of "
                                         r"SOLVER.REFERENCE_WORLD_SIZE 8.*REFERENCE_WORLD_SIZE 0"):
        schedule.check_schedule(cfg)
    schedule.check_schedule(setup_cfg(CONFIG, ["SOLVER.REFERENCE_WORLD_SIZE", "8",
                                               "SOLVER.IMS_PER_BATCH", "16"]))


def test_warm_up_longer_than_training_is_warned_about(mixed, caplog):
    cfg = resolve_epochs(setup_cfg(CONFIG, _opts("SOLVER.EPOCHS", "2",
                                                 "SOLVER.WARMUP_EPOCHS", "5.0")))
    schedule.check_schedule(cfg)
    assert "SOLVER.WARMUP_EPOCHS and SOLVER.EPOCHS" in caplog.text
    assert "never reaches SOLVER.BASE_LR" in caplog.text
    caplog.clear()
    schedule.check_schedule(setup_cfg(CONFIG, ["SOLVER.MAX_ITER", "20",
                                               "SOLVER.WARMUP_ITERS", "20"]))
    assert "SOLVER.WARMUP_ITERS and SOLVER.MAX_ITER: 20 of 20" in caplog.text
    caplog.clear()
    schedule.check_schedule(setup_cfg(CONFIG, ["SOLVER.MAX_ITER", "20",
                                               "SOLVER.WARMUP_ITERS", "10"]))
    assert "warm-up" not in caplog.text


def test_saved_config_is_used_as_it_is_and_resume_keeps_its_schedule(mixed, tmp_path,
                                                                    monkeypatch):
    args = argparse.Namespace(config_file=CONFIG, opts=[*_opts(), "OUTPUT_DIR", str(tmp_path)],
                              eval_only=False, dataset=[], resume=False, num_gpus=1)
    first = setup(args)
    assert first.SOLVER.MAX_ITER == 11
    saved = tmp_path / "config.yaml"
    assert "3 epochs = 11 iterations at batch 2 over 7 images" in saved.read_text()

    def no_dataset_read(cfg):
        raise AssertionError("a resolved config must not be converted again")

    monkeypatch.setattr(schedule, "train_dataset_dicts", no_dataset_read)
    again = resolve_epochs(setup_cfg(str(saved)))  # config.yaml as tools re-load it
    for key in ("MAX_ITER", "STEPS", "WARMUP_ITERS", "CHECKPOINT_PERIOD", "EPOCHS"):
        assert again.SOLVER[key] == first.SOLVER[key], key
    with pytest.raises(ValueError, match="SOLVER.EPOCHS 4.*SOLVER.MAX_ITER 0"):
        resolve_epochs(setup_cfg(str(saved), ["SOLVER.EPOCHS", "4"]))  # stale iterations
    monkeypatch.undo()
    assert resolve_epochs(setup_cfg(str(saved), ["SOLVER.EPOCHS", "4", "SOLVER.MAX_ITER", "0"])
                          ).SOLVER.MAX_ITER == 14  # converted anew: ceil(4 * 7 / 2)

    # The original command with --resume, after the training set grew: the run keeps the
    # image count it started with, so its schedule (and the resume) stays exact.
    mixed["full"] = 9
    resumed = setup(argparse.Namespace(**{**vars(args), "resume": True}))
    assert resumed.SOLVER.MAX_ITER == 11
    assert "over 7 images" in saved.read_text()
    fresh = setup(argparse.Namespace(**{**vars(args), "opts": [*args.opts[:-1],
                                                                 str(tmp_path / "new")]}))
    assert fresh.SOLVER.MAX_ITER == 14  # a new run sees the 9 images
