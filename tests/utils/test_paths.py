"""user_cache_dir follows XDG, so caches work for read-only dataset folders; the shared checks
of output locations and of file names read from a JSON."""

import os
from pathlib import Path

import pytest

from panoptic_ext.utils.paths import (
    OutputPathError,
    check_output_file,
    join_inside,
    prepare_output_dir,
    refuse_replacing_inputs,
    user_cache_dir,
)


def test_xdg_cache_home_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir("validate") == tmp_path / "panoptic_ext" / "validate"
    assert not (tmp_path / "panoptic_ext").exists()  # not created
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty means unset, per the spec
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir("a", "b") == Path(tmp_path, "home", ".cache", "panoptic_ext", "a", "b")
    assert user_cache_dir() == Path(os.path.expanduser("~"), ".cache", "panoptic_ext")


def test_output_locations_are_checked(tmp_path):
    assert prepare_output_dir(tmp_path / "a" / "b", "--out") == str(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputPathError, match=f"--out: {tmp_path / 'f'} is a file"):
        prepare_output_dir(tmp_path / "f", "--out")
    with pytest.raises(OutputPathError, match=f"--out: cannot create the folder {tmp_path}/f/x"):
        prepare_output_dir(tmp_path / "f" / "x", "--out")
    with pytest.raises(OutputPathError, match=f"--json: {tmp_path / 'a'} is a folder"):
        check_output_file(tmp_path / "a", "--json")
    assert check_output_file(tmp_path / "n" / "r.json") == str(tmp_path / "n" / "r.json")


def test_an_output_that_is_an_input_is_refused(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_text("")
    (tmp_path / "link.jpg").symlink_to(photo)
    refuse_replacing_inputs([tmp_path / "o" / "photo.jpg"], [photo])
    for out in (photo, tmp_path / "." / "photo.jpg", tmp_path / "link.jpg"):
        with pytest.raises(OutputPathError, match=f"would replace the input {photo}"):
            refuse_replacing_inputs([tmp_path / "x.png", out], [photo])


def test_json_file_names_stay_inside_their_folder():
    assert join_inside("/d", "a/b.png", "p.json") == "/d/a/b.png"
    assert join_inside("/d", "a/../b.png", "p.json") == "/d/a/../b.png"
    for name in ("../x.png", "a/../../x.png", "/etc/passwd"):
        with pytest.raises(ValueError, match=f"p.json: file_name '{name}' leads outside"):
            join_inside("/d", name, "p.json")
    assert join_inside("/d", "../x.png", "p.json", allow_outside=True) == "/d/../x.png"
