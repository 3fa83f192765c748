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
    # The final evaluation's scalars reach the training log (plot_curves draws PQ from it).
    rows = [json.loads(x) for x in (trained / "metrics.json").read_text().splitlines()]
    evaluated = [r for r in rows if "panoptic_seg/PQ" in r]
    assert [r["panoptic_seg/PQ"] for r in evaluated] == [metrics["panoptic_seg"]["PQ"]]


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


def test_rerun_into_a_used_folder_is_refused(trained, env, tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    for f in ("model_final.pth", "last_checkpoint"):
        (out / f).write_bytes((trained / f).read_bytes())
    proc = _run(["tools/train_net.py", "--config-file", CONFIG, *FAST, "SOLVER.MAX_ITER", "2",
                 "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(out)], env, check=False)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert f"OUTPUT_DIR {out} already holds checkpoints" in err
    assert "--resume" in err and "--overwrite" in err
    assert (out / "model_final.pth").read_bytes() == (trained / "model_final.pth").read_bytes()
    assert not (out / "metrics.json").exists()


def test_eval_only_refuses_a_file_without_weights(trained, env, tmp_path):
    foreign = tmp_path / "foo.pth"
    foreign.write_bytes(b"garbage, not a checkpoint")
    proc = _run(["tools/train_net.py", "--config-file", CONFIG, "--eval-only", *FAST,
                 "MODEL.WEIGHTS", str(foreign), "OUTPUT_DIR", str(tmp_path / "eval")], env,
                check=False)
    assert proc.returncode != 0
    assert f"cannot read weights {foreign}" in proc.stdout + proc.stderr
    assert not (tmp_path / "eval" / "inference").exists()
