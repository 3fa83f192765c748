"""The exported runners' shared result writing (panoptic_ext.deploy.runner_io), with a stand-in
model: outputs never replace inputs, one run per folder, no stale predictions.json, and a bad
--output named; and the copy next to the runner imports without panoptic_ext."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from panoptic_ext.apps.demo import PanopticDemo
from panoptic_ext.deploy import runner_io
from panoptic_ext.deploy.export import _copy_runner
from panoptic_ext.utils.locks import run_lock
from panoptic_ext.utils.paths import OutputPathError

INFO = {"input_format": "RGB", "min_size_test": 0, "max_size_test": 0, "things": [],
        "stuff": [{"id": 7, "contiguous_id": 0, "name": "sky"}]}


def _predict(chw, size):
    """One stuff segment covering the image."""
    h, w = size
    return [np.ones((h, w), np.int32), np.array([1]), np.array([0]), np.array([False]),
            np.array([1.0]), np.array([-1]), np.array([h * w])]


def _images(folder, n=2):
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(str(folder / f"photo{i}.jpg"))
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(paths[-1])
    return paths


def test_writes_results(tmp_path):
    files = _images(tmp_path / "in")
    assert runner_io.run_files(files, str(tmp_path / "out"), INFO, _predict) == 0
    preds = json.loads((tmp_path / "out/predictions.json").read_text())
    assert [a["file_name"] for a in preds["annotations"]] == ["photo0.png", "photo1.png"]
    assert not (tmp_path / "out/.run.lock").exists()  # released


def test_output_replacing_an_input_is_refused(tmp_path, capsys):
    files = _images(tmp_path / "d")
    before = open(files[0], "rb").read()
    assert runner_io.run_files(files, str(tmp_path / "d"), INFO, _predict) == 1
    err = capsys.readouterr().err
    assert f"would replace the input {files[0]}" in err
    assert open(files[0], "rb").read() == before
    with pytest.raises(OutputPathError, match="would replace the input"):  # the demo's too
        PanopticDemo.run_files(None, files, str(tmp_path / "d"))
    video = tmp_path / "d" / "clip.mp4"
    video.write_bytes(b"frames")
    with pytest.raises(OutputPathError, match=f"would replace the input {video}"):
        PanopticDemo.run_video(None, str(video), str(video))
    assert video.read_bytes() == b"frames"


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path, capsys):
    files = _images(tmp_path / "in")
    out = tmp_path / "out"
    with run_lock(out, what="another run writing results", option="--output"):
        assert runner_io.run_files(files, str(out), INFO, _predict) == 1
    assert f"{out} is in use by another run writing results" in capsys.readouterr().err
    assert not (out / "predictions.json").exists()


def test_stale_predictions_removed_at_start(tmp_path):
    files = _images(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text('{"annotations": ["old"]}')

    def crash(chw, size):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner_io.run_files(files, str(out), INFO, crash)
    assert not (out / "predictions.json").exists()


def test_output_that_is_a_file_is_named(tmp_path, capsys):
    files = _images(tmp_path / "in")
    (tmp_path / "afile").write_text("x")
    assert runner_io.run_files(files, str(tmp_path / "afile"), INFO, _predict) == 1
    assert f"--output: {tmp_path / 'afile'} is a file" in capsys.readouterr().err


def test_copied_runner_modules_import_without_the_package(tmp_path):
    _copy_runner(str(tmp_path), "torchscript")
    code = ("import sys; sys.modules['panoptic_ext'] = None; sys.modules['torch'] = None\n"
            f"sys.path.insert(0, {str(tmp_path)!r}); import runner_io\n"
            "assert runner_io.output_run and runner_io.run_lock")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
