"""benchmarks/cpu_scaling.py: the table it prints, and a clear refusal without images (the
timed runs themselves start one model process per core and are not part of the suite)."""

import pytest

from benchmarks.cpu_scaling import SETTINGS, format_scaling, main


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
