"""tools/train_net.py as users run it: train, resume, --eval-only."""

import json

from tests.helpers.tools import CONFIG, FAST
from tests.helpers.tools import run_tool as _run


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
    # The same weights on the same images: exactly the numbers the training run ended with.
    final = json.loads(
        (trained / "inference/synthetic_panoptic_val_separated/metrics.json").read_text())
    assert metrics["panoptic_seg"] == final["panoptic_seg"]
    assert metrics["sem_seg"] == final["sem_seg"]
