"""user_cache_dir follows XDG, so caches work for read-only dataset folders."""

import os
from pathlib import Path

from panoptic_ext.utils.paths import user_cache_dir


def test_xdg_cache_home_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert user_cache_dir("validate") == tmp_path / "panoptic_ext" / "validate"
    assert not (tmp_path / "panoptic_ext").exists()  # not created
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty means unset, per the spec
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir("a", "b") == Path(tmp_path, "home", ".cache", "panoptic_ext", "a", "b")
    assert user_cache_dir() == Path(os.path.expanduser("~"), ".cache", "panoptic_ext")
