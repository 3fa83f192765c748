"""TorchScript and ONNX export (tools/export_model.py, panoptic_ext.deploy.export): the exported
model gives the eager model's panoptic result, and its runner works without Detectron2 (the
ONNX runner also without torch)."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from PIL import Image

from panoptic_ext.data import rgb_to_id
from tests.helpers.tools import SYNTHETIC_CONFIG, synthetic_cfg, tool_main, val_images


def _eager_predictor(opts):
    """DefaultPredictor on the model of `opts`, and contiguous -> dataset ids by isthing."""
    cfg = synthetic_cfg(opts)
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    to_dataset = {True: {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()},
                  False: {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}}
    return DefaultPredictor(cfg), to_dataset

def _export(out, images, opts, *extra) -> int:
    """tools/export_model.py into `out`, traced on the first image: its exit code."""
    return tool_main("export_model.py")(["--config-file", SYNTHETIC_CONFIG, "--output",
                                          str(out), *extra, "--sample-image", images[0], *opts])


def _odd_sized_copy(image: str, tmp_path) -> str:
    """A 50 x 61 crop of `image`: a size the export never saw."""
    odd = np.ascontiguousarray(read_image(image, format="RGB")[5:55, 3:])
    Image.fromarray(odd).save(tmp_path / "odd.png")
    return str(tmp_path / "odd.png")


def _run_without(banned, runner, inputs, res, cwd, timeout):
    """`runner` on `inputs` in a fresh interpreter where the `banned` packages cannot be
    imported (and must not have been); its exit code is the process's."""
    code = (
        "import runpy, sys\n"
        f"for name in {banned!r}:\n"
        "    sys.modules[name] = None\n"
        f"sys.argv = ['run_exported.py', *{inputs!r}, '--output', {str(res)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(runner)!r}, run_name='__main__')\n"
        "    code = 0\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None\n"
        f"          and m.split('.')[0] in {banned!r}]\n"
        "assert not loaded, loaded\n"
        "sys.exit(code)\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_export_matches_eager_and_runs_without_detectron2(tiny_root, tiny_opts, tmp_path,
                                                          capsys):
    out = tmp_path / "exported"
    images = val_images(tiny_root)
    # every detection reaches the merge, so thing segments exist even for a 2-iteration model
    opts = [*tiny_opts, "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0"]
    rc = _export(out, images, opts)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "traced == eager: True (pixel agreement 100.0000%)" in text

    # the runner, with Detectron2 and panoptic_ext unimportable, on another image and on one
    # of another size (resized on the way in, result at the original size)
    inputs = [images[1], _odd_sized_copy(images[1], tmp_path)]
    res = tmp_path / "res"
    proc = _run_without(("detectron2", "panoptic_ext"), out / "run_exported.py", inputs, res,
                        tmp_path, 120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # ... gives the eager model's panoptic result (run as DefaultPredictor runs it, which the
    # runner's resize follows): same map, same segments
    predictor, to_dataset = _eager_predictor(opts)
    preds = json.loads((res / "predictions.json").read_text())
    things = 0
    for path, ann in zip(inputs, preds["annotations"], strict=True):
        pan, segments = predictor(read_image(path, format="BGR"))["panoptic_seg"]
        ids = rgb_to_id(np.asarray(Image.open(res / "panoptic" / ann["file_name"])))
        assert ids.shape == tuple(pan.shape) and np.array_equal(ids, pan.numpy())
        expected = [
            {"id": s["id"], "category_id": to_dataset[s["isthing"]][s["category_id"]],
             "isthing": s["isthing"], "score": s.get("score"), "area": int((pan == s["id"]).sum())}
            for s in segments if (pan == s["id"]).any()
        ]
        got = [{k: s.get(k) for k in ("id", "category_id", "isthing", "score", "area")}
               for s in ann["segments_info"]]
        assert got == expected
        things += sum(s["isthing"] for s in got)
    assert things > 0  # the mask paste and overlap steps ran


def _category_map(pan: np.ndarray, segments: list[dict]) -> np.ndarray:
    """Per pixel: 2 * category id + isthing of its segment, -1 for void."""
    lut = np.full(int(pan.max()) + 1, -1, dtype=np.int64)
    for s in segments:
        if s["id"] < lut.size:
            lut[s["id"]] = 2 * s["category_id"] + int(s["isthing"])
    return lut[pan]


def test_onnx_export_runs_without_torch_and_matches_eager(tiny_root, tiny_opts, tmp_path,
                                                          capsys):
    out = tmp_path / "onnx"
    images = val_images(tiny_root)
    opts = [*tiny_opts, "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0"]
    rc = _export(out, images, opts, "--format", "onnx")
    text = capsys.readouterr().out
    assert rc == 0, text
    agreement = float(re.search(r"onnx == eager: \w+ \(pixel agreement ([\d.]+)%\)",
                                text).group(1))
    assert agreement >= 99.9, text
    for name in ("dense.onnx", "box_head.onnx", "mask_head.onnx", "export_info.json",
                 "run_exported.py", "runner_io.py", "numpy_pipeline.py"):
        assert (out / name).is_file(), name

    # the runner with torch, torchvision, Detectron2 and panoptic_ext unimportable, on two val
    # images, one of another size and an unreadable file
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    inputs = [*images, _odd_sized_copy(images[1], tmp_path), str(tmp_path / "broken.jpg")]
    res = tmp_path / "res"
    proc = _run_without(("torch", "torchvision", "detectron2", "panoptic_ext"),
                        out / "run_exported.py", inputs, res, tmp_path, 300)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the unreadable file
    assert "cannot read image" in proc.stderr and "broken.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

    # ... gives the eager model's panoptic result on >= 99.9% of the pixels, dataset ids
    predictor, to_dataset = _eager_predictor(opts)
    preds = json.loads((res / "predictions.json").read_text())
    assert [a["file_name"] for a in preds["annotations"]] == [
        os.path.splitext(os.path.basename(p))[0] + ".png" for p in inputs[:-1]]
    things = 0
    for path, ann in zip(inputs[:-1], preds["annotations"], strict=True):
        pan, segments = predictor(read_image(path, format="BGR"))["panoptic_seg"]
        pan = pan.numpy()
        ids = rgb_to_id(np.asarray(Image.open(res / "panoptic" / ann["file_name"])))
        assert ids.shape == pan.shape
        expected = [dict(s, category_id=to_dataset[s["isthing"]][s["category_id"]])
                    for s in segments]
        agree = (_category_map(ids, ann["segments_info"]) == _category_map(pan, expected)).mean()
        assert agree >= 0.999, (path, agree)
        for s in ann["segments_info"]:
            assert s["area"] == int((ids == s["id"]).sum()) > 0
            assert s["category_id"] in to_dataset[s["isthing"]].values()
        things += sum(s["isthing"] for s in ann["segments_info"])
        picture = Image.open(res / os.path.basename(path))
        assert picture.size == (pan.shape[1], pan.shape[0])
    assert things > 0  # the box and mask graphs, NMS and pasting ran

    # OpenVINO runs the same graphs, and their IR (what --format openvino adds): same result
    pytest.importorskip("openvino")
    from panoptic_ext.deploy import runner_io
    from panoptic_ext.deploy.export import convert_to_openvino
    from panoptic_ext.deploy.numpy_pipeline import OnnxPanoptic

    info = json.loads((out / "export_info.json").read_text())
    image = runner_io.read_image(images[1], info["input_format"])
    chw = runner_io.preprocess_array(image, info)
    ref = OnnxPanoptic(str(out), info)(chw, image.shape[:2])
    runners = [OnnxPanoptic(str(out), info, engine="openvino")]  # reading the .onnx files
    info = convert_to_openvino(str(out))
    assert info["onnx"]["engine"] == "openvino" and (out / "dense.xml").is_file()
    runners.append(OnnxPanoptic(str(out), info))  # the IR, now the export's default engine
    for runner in runners:
        assert runner.engine == "openvino"
        assert (runner(chw, image.shape[:2])[0] == ref[0]).mean() >= 0.999


def test_bad_output_or_sample_image_named_before_the_trace(tmp_path):
    from panoptic_ext.deploy.export import _sample_input, export_onnx, export_torchscript

    cfg = synthetic_cfg(["MODEL.WEIGHTS", str(tmp_path / "w.pth")])
    (tmp_path / "afile").write_text("")
    for export in (export_torchscript, export_onnx):
        with pytest.raises(OSError, match=f"--output: {tmp_path / 'afile'} is a file"):
            export(cfg, str(tmp_path / "afile"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.ts").write_text("my weights")  # MODEL.WEIGHTS named model.ts
    cfg.MODEL.WEIGHTS = str(tmp_path / "d" / "model.ts")
    with pytest.raises(OSError, match="would replace the input .*model.ts"):
        export_torchscript(cfg, str(tmp_path / "d"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=f"--sample-image {broken} cannot be read as an image"):
        _sample_input(cfg, None, str(broken))
