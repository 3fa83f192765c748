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


# ---- images of every mode, weights that do not fit ---------------------------------------------

import importlib.util  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from panoptic_ext.apps.demo import PanopticDemo, read_image, to_8bit  # noqa: E402
from panoptic_ext.engine import setup_cfg  # noqa: E402
from panoptic_ext.engine.weights import WeightsError  # noqa: E402


def _template():
    from panoptic_ext.deploy import export

    spec = importlib.util.spec_from_file_location("run_exported", export._TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mode_converted_without_clipping(tmp_path):
    ramp = np.arange(64 * 64).reshape(64, 64)
    cases = {
        "I;16": (Image.fromarray((ramp * 16).astype(np.uint16)), (ramp * 16) * 255 / 65535),
        "I": (Image.fromarray((ramp * 100).astype(np.int32)), ramp * 255 / ramp.max()),
        "F": (Image.fromarray((ramp / 4095).astype(np.float32) * 1000 - 500),
              ramp * 255 / ramp.max()),
        "F in 0..255": (Image.fromarray((ramp % 256).astype(np.float32)), ramp % 256),
    }
    runner = _template()
    for name, (img, expected) in cases.items():
        ours = np.asarray(to_8bit(img))
        assert ours.dtype == np.uint8 and img.mode in name.split()[0]
        assert np.abs(ours.astype(float) - expected).max() <= 0.5 + 1e-6, name
        assert ours.max() < 255 or expected.max() > 254.5, f"{name} saturated"
        assert np.array_equal(np.asarray(runner.to_8bit(img)), ours), name  # same in the runner
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(rgb[:, :, 0]).convert("LA").save(tmp_path / "la.png")
    assert read_image(str(tmp_path / "p.png"), "RGB").shape == (8, 8, 3)
    la = read_image(str(tmp_path / "la.png"), "RGB")
    assert np.array_equal(la[:, :, 1], rgb[:, :, 0])


def test_16_bit_gray_and_rgb_predict_like_8_bit(root, opts, tmp_path):
    import cv2

    src = cv2.imread(_val_images(root)[0])  # BGR uint8
    folder = tmp_path / "in"
    folder.mkdir()
    gray8 = cv2.cvtColor(src, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(folder / "gray8.png"), gray8)
    cv2.imwrite(str(folder / "gray16.png"), gray8.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "rgb8.png"), src)
    cv2.imwrite(str(folder / "rgb16.png"), src.astype(np.uint16) * 257)
    assert Image.open(folder / "gray16.png").mode == "I;16"
    runner = _template()
    for a, b in (("gray8", "gray16"), ("rgb8", "rgb16")):
        assert np.array_equal(read_image(str(folder / f"{a}.png")),
                              read_image(str(folder / f"{b}.png")))
        assert np.array_equal(runner.read_image(str(folder / f"{b}.png"), "BGR"),
                              read_image(str(folder / f"{a}.png")))  # the exported runner too
    out = tmp_path / "out"
    assert _tool("demo.py")(["--config-file", CONFIG, "--input", str(folder), "--output",
                             str(out), "--opts", *opts]) == 0
    for a, b in (("gray8", "gray16"), ("rgb8", "rgb16")):
        pa = np.asarray(Image.open(out / "panoptic" / f"{a}.png"))
        pb = np.asarray(Image.open(out / "panoptic" / f"{b}.png"))
        assert np.array_equal(pa, pb), f"{b} is not predicted like {a}"


def test_demo_refuses_weights_that_do_not_fit(root, opts, tmp_path, capsys):
    base = [o for o in opts]
    at = base.index("MODEL.WEIGHTS")
    for weights, message in (("", "MODEL.WEIGHTS is empty: the demo needs trained weights"),
                             (str(tmp_path / "none.pth"), "none.pth: no such file")):
        cfg = setup_cfg(CONFIG, [*base[:at], *base[at + 2:], "MODEL.WEIGHTS", weights],
                        eval_only=True)
        with pytest.raises(WeightsError, match=message):
            PanopticDemo(cfg)
    foreign = tmp_path / "foo.pth"
    torch.save({"foo": torch.zeros(2)}, foreign)
    image = _val_images(root)[0]
    assert _tool("demo.py")(["--config-file", CONFIG, "--input", image, "--output",
                             str(tmp_path / "out"), "--opts", *base, "MODEL.WEIGHTS",
                             str(foreign)]) == 1
    assert f"ERROR: weights {foreign} hold no tensor of this model" in capsys.readouterr().err
