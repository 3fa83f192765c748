"""Atomic writes: a file appears whole or not at all, and a failed write changes nothing."""

import json
import os
import stat

import pytest

from panoptic_ext.utils.io import (
    TEMP_SUFFIX,
    atomic_write,
    atomic_write_json,
    atomic_writer,
    read_json_or_none,
)


def _others(folder, name):
    return sorted(p for p in os.listdir(folder) if p != name)


def test_round_trips(tmp_path):
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write(str(tmp_path / "t.txt"), "héllo")
    assert (tmp_path / "t.txt").read_text() == "héllo"
    atomic_write_json(tmp_path / "j.json", {"a": [1, 2]}, indent=2)
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1, 2]}
    assert "\n" in (tmp_path / "j.json").read_text()  # dump kwargs are passed on
    with atomic_writer(tmp_path / "w.txt", "w", durable=True) as f:
        f.write("x")
    assert (tmp_path / "w.txt").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "j.json", "t.txt", "w.txt"]


def test_replaces_and_gets_normal_permissions(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    atomic_write(path, "new")
    assert path.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask  # not mkstemp's private 0600


def test_failing_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('{"old": true}')
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(path, "w") as f:
        f.write('{"new": ')
        raise RuntimeError("disk on fire")
    assert path.read_text() == '{"old": true}'
    with pytest.raises(TypeError):  # not JSON-serializable, half written
        atomic_write_json(path, {"a": 1, "b": object()})
    assert json.loads(path.read_text()) == {"old": True}
    assert _others(tmp_path, "f.json") == []
    with pytest.raises(KeyboardInterrupt), atomic_writer(tmp_path / "new.txt") as f:
        raise KeyboardInterrupt  # even an interrupt cleans up, and creates nothing
    assert _others(tmp_path, "f.json") == []


def test_temp_file_sits_next_to_the_target_until_the_end(tmp_path):
    with atomic_writer(tmp_path / "f.txt", "w") as f:
        f.write("x")
        (tmp,) = os.listdir(tmp_path)
        assert tmp.startswith(".f.txt.") and tmp.endswith(TEMP_SUFFIX)
        assert not (tmp_path / "f.txt").exists()  # a reader never sees a partial file
    assert os.listdir(tmp_path) == ["f.txt"]


def test_read_json_or_none(tmp_path):
    assert read_json_or_none(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json_or_none(tmp_path / "bad.json") is None
    assert read_json_or_none(tmp_path) is None  # a folder
    (tmp_path / "ok.json").write_text("[1]")
    assert read_json_or_none(str(tmp_path / "ok.json")) == [1]


def test_a_failed_write_names_the_file(tmp_path):
    from panoptic_ext.utils.io import WriteError

    (tmp_path / "afile").write_text("")
    target = tmp_path / "afile" / "out.json"  # its folder is a file
    with pytest.raises(WriteError, match=f"cannot write {target}: Not a directory"):
        atomic_write_json(target, {})

    def fail(f):
        raise OSError(27, "File too large")

    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'big'}: File too large"):
        with atomic_writer(tmp_path / "big") as f:
            fail(f)
    assert os.listdir(tmp_path) == ["afile"]  # no temp file left
