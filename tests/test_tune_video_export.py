"""tools/tune_combine.py, tools/demo.py --video-input and tools/export_model.py end to end, on a
2-iteration model trained on 64-px synthetic data.

The model uses GroupNorm: with BatchNorm, 2 iterations from scratch leave running statistics
that make eval-mode activations explode (no proposal survives); GN behaves the same in training
and eval, so the untrained model gives many low-score detections (hence the score thresholds
of 0). The tools run in this process (their `main`), except training and the exported runner,
which must show it works without Detectron2.
"""

import json
import os
import re
import runpy
import subprocess
import sys

import cv2
import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import inference_on_dataset
from PIL import Image

from panoptic_ext import add_panoptic_config
from panoptic_ext.data import generate_synthetic_dataset, register_synthetic, rgb_to_id

from .conftest import REPO

CONFIG = os.path.join(REPO, "configs/Synthetic/panoptic_fpn_R_50.yaml")
SMALL = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20",
]
TRAIN = [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.MAX_ITER", "2",
    "SOLVER.CHECKPOINT_PERIOD", "100", "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64", "DATASETS.TEST", "()",  # no final evaluation
]


def _tool(name: str):
    """The tool's `main`, run in this process; its logger setup is skipped (it would bind
    handlers to pytest's captured streams, closed after the test)."""
    main = runpy.run_path(os.path.join(REPO, "tools", name), run_name="tool")["main"]
    main.__globals__["setup_logger"] = lambda *args, **kwargs: None
    return main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_dataset(root, seed=5, num_train=4, num_val=2, size=64, progress=False)
    register_synthetic(root)
    yield root
    register_synthetic()


@pytest.fixture(scope="module")
def weights(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", CONFIG, *SMALL, *TRAIN,
         "OUTPUT_DIR", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out / "model_final.pth")


@pytest.fixture(scope="module")
def opts(weights):
    return [*SMALL, "MODEL.WEIGHTS", weights]


def _cfg(opts):
    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(opts)
    return cfg


def _val_images(root):
    folder = root / "synthetic_panoptic/val"
    return [str(folder / f) for f in sorted(os.listdir(folder))]


def _table(text):
    """Rows of the printed pipe table as lists of cells."""
    return [[c.strip() for c in ln.strip().strip("|").split("|")]
            for ln in text.splitlines() if ln.startswith("|") and not ln.startswith("|--")][1:]


def test_tune_combine_writes_best_setting(opts, tmp_path, capsys):
    out = tmp_path / "tuned.yaml"
    rc = _tool("tune_combine.py")([
        "--config-file", CONFIG, "--output", str(out), "--overlap-thresh", "0.3,0.8",
        "--stuff-area", "0,200", "--score-thresh", "0.0,0.02", *opts])
    assert rc == 0
    text = capsys.readouterr().out
    rows = _table(text)
    assert len(rows) == 3 * 3 * 3  # each axis: 2 values + the config's
    assert [r[1:4] for r in rows if r[-1] == "default"] == [["0.500", "64", "0.500"]]
    pq = {k: float(re.search(rf"^{k}: +PQ ([0-9.]+)", text, re.M).group(1))
          for k in ("default", "best")}
    assert pq["best"] >= pq["default"]
    assert float(rows[0][4]) == pytest.approx(pq["best"], abs=1e-3)
    assert re.search(r"^gain: +[+-][0-9.]+ PQ", text, re.M)

    cfg = _cfg(opts)
    cfg.merge_from_file(str(out))  # merges: same keys, same types
    c = cfg.MODEL.PANOPTIC_FPN.COMBINE
    assert (c.OVERLAP_THRESH, c.STUFF_AREA_LIMIT, c.INSTANCES_CONFIDENCE_THRESH) == (
        float(rows[0][1]), int(rows[0][2]), float(rows[0][3]))

    # the default row is what the model itself scores with PanopticEvaluator
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from panoptic_ext.evaluation import PanopticEvaluator

    cfg = _cfg(opts)
    name = cfg.DATASETS.TEST[0]
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    res = inference_on_dataset(model, build_detection_test_loader(cfg, name),
                               PanopticEvaluator(name))
    assert res["panoptic_seg"]["PQ"] == pytest.approx(pq["default"], abs=1e-3)


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


def test_export_matches_eager_and_runs_without_detectron2(root, opts, tmp_path, capsys):
    from panoptic_ext.demo import PanopticDemo

    out = tmp_path / "exported"
    images = _val_images(root)
    # every detection reaches the merge, so thing segments exist even for a 2-iteration model
    opts = [*opts, "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0"]
    rc = _tool("export_model.py")(["--config-file", CONFIG, "--output", str(out),
                                   "--sample-image", images[0], *opts])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "traced == eager: True (pixel agreement 100.0000%)" in text

    # the runner, with Detectron2 and panoptic_ext unimportable, on another image and on one
    # of another size (resized on the way in, result at the original size)
    odd = np.ascontiguousarray(read_image(images[1], format="RGB")[5:55, 3:])  # 50 x 61
    Image.fromarray(odd).save(tmp_path / "odd.png")
    inputs = [images[1], str(tmp_path / "odd.png")]
    res = tmp_path / "res"
    code = (
        "import runpy, sys\n"
        "sys.modules['detectron2'] = None; sys.modules['panoptic_ext'] = None\n"
        f"sys.argv = ['run_exported.py', *{inputs!r}, '--output', {str(res)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(out / 'run_exported.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None\n"
        "          and m.split('.')[0] in ('detectron2', 'panoptic_ext')]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # ... gives the eager model's panoptic result: same map, same segments
    demo = PanopticDemo(_cfg(opts))
    meta = demo.metadata
    to_dataset = {True: {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()},
                  False: {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}}
    preds = json.loads((res / "predictions.json").read_text())
    things = 0
    for path, ann in zip(inputs, preds["annotations"], strict=True):
        pan, segments = demo.predict(read_image(path, format="BGR"))["panoptic_seg"]
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
