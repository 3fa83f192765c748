"""tools/demo.py --video-input end to end, on a 2-iteration model trained on 64-px synthetic
data (the `tiny_trained` fixture of tests/conftest.py; merge tuning and export are tested in
test_tune.py and test_export.py).

The tools run in this process (their `main`).
"""

import os

import cv2
import pytest

from tests.helpers.tools import SYNTHETIC_CONFIG as CONFIG
from tests.helpers.tools import tool_main as _tool


@pytest.fixture(scope="module")
def root(tiny_root):
    return tiny_root


@pytest.fixture(scope="module")
def opts(tiny_opts):
    return tiny_opts


def _val_images(root):
    folder = root / "synthetic_panoptic/val"
    return [str(folder / f) for f in sorted(os.listdir(folder))]


def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 64))
    for f in frames:
        writer.write(f)
    writer.release()


def test_video_demo(root, opts, tmp_path, capsys):
    images = [cv2.imread(p) for p in _val_images(root)]
    video = tmp_path / "in.mp4"
    _write_video(video, [images[i % len(images)] for i in range(5)])
    out = tmp_path / "out" / "annotated.mp4"
    demo = _tool("demo.py")
    assert demo(["--config-file", CONFIG, "--video-input", str(video), "--output", str(out),
                 "--opts", *opts]) == 0
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 5
    shapes = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        shapes.append(frame.shape)
    assert shapes == [(64, 64, 3)] * 5

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    assert demo(["--config-file", CONFIG, "--video-input", str(bad), "--output",
                 str(tmp_path / "x.mp4"), "--opts", *opts]) == 1
    assert f"cannot read video {bad}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # exactly one source
        demo(["--config-file", CONFIG, "--video-input", str(video), "--input", str(video)])
