"""End to end through the scripts users run: train_net (train, resume, eval-only) and demo."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from panoptic_ext.data import generate_synthetic_dataset, rgb_to_id

from .conftest import REPO

CONFIG = os.path.join(REPO, "configs/Synthetic/panoptic_fpn_R_50.yaml")
# Small and quick: 64-px images, batch 2; the model is the real R-50 Panoptic FPN.
FAST = [
    "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
]


def _run(args, env, check=True):
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_dataset(root, seed=3, num_train=6, num_val=3, size=64, progress=False)
    e = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="2")
    return e


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    _run(["tools/train_net.py", "--config-file", CONFIG, *FAST, "SOLVER.MAX_ITER", "2",
          "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)], env)
    return out


def test_train_writes_checkpoints_and_metrics(trained):
    assert (trained / "model_final.pth").is_file()
    assert (trained / "last_checkpoint").read_text().strip() == "model_final.pth"
    metrics = json.loads(
        (trained / "inference/synthetic_panoptic_val_separated/metrics.json").read_text()
    )
    assert set(metrics) >= {"panoptic_seg", "bbox", "segm", "sem_seg"}
    assert {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"} <= set(metrics["panoptic_seg"])
    assert "mIoU" in metrics["sem_seg"]


def test_resume_continues_from_last_checkpoint(trained, env, tmp_path):
    out = tmp_path / "resume"
    out.mkdir()
    for f in ("model_0000000.pth", "last_checkpoint"):
        (out / f).write_bytes((trained / f).read_bytes())
    (out / "last_checkpoint").write_text("model_0000000.pth")
    proc = _run(["tools/train_net.py", "--config-file", CONFIG, "--resume", *FAST,
                 "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100",
                 "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(out)], env)
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 1" in log
    assert (out / "model_final.pth").is_file()
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    assert [x["iteration"] for x in lines if "total_loss" in x][-1] == 2


def test_eval_only_writes_metrics(trained, env, tmp_path):
    out = tmp_path / "eval"
    _run(["tools/train_net.py", "--config-file", CONFIG, "--eval-only", *FAST,
          "MODEL.WEIGHTS", str(trained / "model_final.pth"), "OUTPUT_DIR", str(out)], env)
    path = out / "inference/synthetic_panoptic_val_separated/metrics.json"
    metrics = json.loads(path.read_text())
    assert 0.0 <= metrics["panoptic_seg"]["PQ"] <= 100.0


def test_demo_good_grayscale_corrupt(trained, env, tmp_path):
    root = env["DETECTRON2_DATASETS"]
    src = os.path.join(root, "synthetic_panoptic/val")
    images = sorted(os.listdir(src))
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = inputs / "good.jpg"
    good.write_bytes(open(os.path.join(src, images[0]), "rb").read())
    Image.open(os.path.join(src, images[1])).convert("L").save(inputs / "gray.png")
    rgba = Image.open(os.path.join(src, images[2])).convert("RGBA")
    rgba.save(inputs / "alpha.png")
    (inputs / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "out"
    proc = _run(["tools/demo.py", "--config-file", CONFIG, "--input", str(inputs),
                 "--output", str(out), "--opts", *FAST,
                 "MODEL.WEIGHTS", str(trained / "model_final.pth"),
                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                 "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0"],
                env, check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "broken.jpg" in proc.stderr
    preds = json.loads((out / "predictions.json").read_text())
    by_name = {a["file_name"]: a for a in preds["annotations"]}
    assert set(by_name) == {"good.png", "gray.png", "alpha.png"}
    for name in ("good.jpg", "gray.png", "alpha.png"):
        assert (out / name).is_file()
    for ann in preds["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(out / "panoptic" / ann["file_name"])))
        assert ids.shape == (64, 64)
        present = set(np.unique(ids).tolist()) - {0}
        assert present == {s["id"] for s in ann["segments_info"]}
        for seg in ann["segments_info"]:
            assert int((ids == seg["id"]).sum()) == seg["area"]
            known = {1, 3, 5} if seg["isthing"] else {7, 8, 10}
            assert seg["category_id"] in known
            assert ("score" in seg) == seg["isthing"]
    assert not (out / "broken.jpg").exists()
