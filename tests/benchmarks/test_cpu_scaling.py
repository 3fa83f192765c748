"""benchmarks/cpu_scaling.py: the table it prints, and a clear refusal without images (the
timed runs themselves start one model process per core and are not part of the suite); the
in-process all-outputs / panoptic-alone comparison on the tiny trained model."""

import os

import cv2
import pytest

from benchmarks.cpu_scaling import (
    SETTINGS,
    format_outputs,
    format_scaling,
    main,
    outputs_side_by_side,
)
from tests.helpers.tools import SYNTHETIC_CONFIG


def test_table_gives_each_setting_against_the_first():
    rows = [{"processes": 1, "threads": 2, "batch": 1, "images_per_s": 7.5},
            {"processes": 2, "threads": 1, "batch": 8, "images_per_s": 6.0}]
    lines = format_scaling(rows).splitlines()
    assert lines[2] == "| 1 x 2 | 1 | 7.50 | 1.00 |"
    assert lines[3] == "| 2 x 1 | 8 | 6.00 | 0.80 |"
    # the first setting is the baseline: one process, every thread, one image per call
    assert SETTINGS[0] == (1, 0, 1)


def test_no_images_is_refused_naming_the_pattern(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config-file", "x.yaml", "--images", str(tmp_path / "*.jpg")])
    assert "matches no file" in capsys.readouterr().err


def test_outputs_ab_times_both_and_checks_the_answers(tiny_root, tiny_opts):
    from panoptic_ext.apps.demo import PanopticDemo
    from panoptic_ext.engine.defaults import setup_cfg

    demo = PanopticDemo(setup_cfg(SYNTHETIC_CONFIG, list(tiny_opts), eval_only=True))
    folder = tiny_root / "synthetic_panoptic/val"
    images = [cv2.imread(str(folder / f)) for f in sorted(os.listdir(folder))]
    rows = outputs_side_by_side(demo, images, batches=(1, 2), rounds=2)
    assert [r["batch"] for r in rows] == [1, 2]
    assert all(r["identical"] for r in rows)
    assert all(len(r["all"]) == len(r["panoptic"]) == 2 and min(r["all"] + r["panoptic"]) > 0
               for r in rows)
    lines = format_outputs(rows).splitlines()
    assert lines[2].startswith("| 1 | ") and lines[2].endswith("| yes |")
    rows[1]["identical"] = False
    assert format_outputs(rows).splitlines()[3].endswith("| NO |")
