"""benchmarks/onnx_runner_speed.py: the exported pipeline's agreement with eager torch over
several images (no timing asserted)."""

import glob

import pytest

from benchmarks import onnx_runner_speed
from tests.deploy.test_runtime import SMALL
from tests.helpers.tools import SYNTHETIC_CONFIG


def test_agreement_over_images(pristine, capsys):
    pytest.importorskip("onnxruntime")
    images = sorted(glob.glob(str(pristine / "synthetic_panoptic" / "val" / "*.jpg")))
    assert len(images) == 2
    assert onnx_runner_speed.main([*images, "--repeat", "0", "--config-file",
                                   SYNTHETIC_CONFIG, "--", *SMALL]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "% of pixels" in line]
    assert len(lines) == 2  # one per image
    total = float(out.split("pixels equal to the eager model: ")[1].split("%")[0])
    assert total >= 99.9
    assert "eager s:" not in out  # --repeat 0: agreement only
