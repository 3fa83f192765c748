"""Training survives: SIGKILL + --resume, SIGTERM save-and-stop, interrupted checkpoint writes,
exact data-order resume, non-finite losses named, and 2-process CPU (gloo) runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import hooks

from panoptic_ext import add_panoptic_config
from panoptic_ext.data import generate_synthetic_dataset, register_synthetic
from panoptic_ext.engine import Trainer
from panoptic_ext.utils.io import TEMP_SUFFIX
from tests.helpers.tools import CONFIG, FAST, REPO
from tests.helpers.tools import run_tool as _run


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_dataset(root, seed=5, num_train=6, num_val=2, size=64, progress=False)
    return dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1")


def _train_cmd(out, *extra, flags=()):
    return ["tools/train_net.py", "--config-file", CONFIG, *flags, *FAST,
            "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.LOG_PERIOD", "1", "TEST.EVAL_PERIOD", "0",
            "OUTPUT_DIR", str(out), *extra]


def _start(args, env):
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path, proc, timeout=300):
    t0 = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {path} appeared:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timeout waiting for {path}")
        time.sleep(0.05)


def _logged_iterations(out):
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    return [x["iteration"] for x in lines if "total_loss" in x]


def test_sigkill_then_resume_reaches_final_without_gap(env, tmp_path):
    out = tmp_path / "run"
    proc = _start(_train_cmd(out, "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "()"), env)
    _wait_for(out / "model_0000002.pth", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model_final.pth").exists()
    # The pointer always names a complete checkpoint.
    pointed = (out / "last_checkpoint").read_text()
    torch.load(out / pointed, map_location="cpu", weights_only=False)
    cmd = _train_cmd(out, "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "()", flags=["--resume"])
    proc = _run(cmd, env)
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration" in log
    assert (out / "model_final.pth").is_file()
    assert _logged_iterations(out) == list(range(6))
    assert not [p.name for p in out.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_sigterm_saves_and_exits_cleanly(env, tmp_path):
    out = tmp_path / "run"
    proc = _start(_train_cmd(out, "SOLVER.MAX_ITER", "200", "SOLVER.CHECKPOINT_PERIOD", "1000",
                             "DATASETS.TEST", "()"), env)
    t0 = time.time()
    while "iter: 1 " not in (out / "log.txt").read_text() if (out / "log.txt").exists() else True:
        assert time.time() - t0 < 300 and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "Rerun with --resume" in output
    pointed = (out / "last_checkpoint").read_text()
    state = torch.load(out / pointed, map_location="cpu", weights_only=False)
    assert state["iteration"] >= 1
    trainer_state = state["trainer"]
    assert "optimizer" in trainer_state["_trainer"] and "LRScheduler" in trainer_state["hooks"]
    assert "data_seed" in trainer_state


def test_non_finite_loss_names_iteration_and_term(env, tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", env["DETECTRON2_DATASETS"])
    register_synthetic()
    try:
        cfg = add_panoptic_config(get_cfg())
        cfg.merge_from_file(CONFIG)
        cfg.merge_from_list([*FAST, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path)])
        cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS.loss_sem_seg = float("nan")
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        with pytest.raises(FloatingPointError, match=r"iteration 0: loss_sem_seg=nan"):
            trainer.train()
        assert not list(tmp_path.glob("*.pth"))
    finally:
        monkeypatch.undo()
        register_synthetic()


def test_two_cpu_processes_train_and_evaluate_like_one(env, tmp_path):
    out = tmp_path / "ddp"
    port = 29500 + os.getpid() % 1000
    _run(["tools/train_net.py", "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}",
          "--config-file", CONFIG, *FAST, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD",
          "100", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)], env)
    assert (out / "model_final.pth").is_file()
    results = {}
    for n in (1, 2):
        ev = tmp_path / f"eval{n}"
        _run(["tools/train_net.py", "--num-gpus", str(n), "--dist-url",
              f"tcp://127.0.0.1:{port + n}", "--config-file", CONFIG, "--eval-only", *FAST,
              "MODEL.WEIGHTS", str(out / "model_final.pth"),
              "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
              "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0",
              "OUTPUT_DIR", str(ev)], env)
        path = ev / "inference/synthetic_panoptic_val_separated/metrics.json"
        results[n] = json.loads(path.read_text())
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert results[1]["panoptic_seg"][key] == pytest.approx(results[2]["panoptic_seg"][key])
    assert results[1]["sem_seg"]["mIoU"] == pytest.approx(results[2]["sem_seg"]["mIoU"])


def test_resume_with_precise_bn_restores_the_training_stream(env, tmp_path, monkeypatch):
    """PreciseBN builds a second train loader through the trainer; the resumed position must
    still go to the loader that trains, so the run sees the batches it would have seen."""
    monkeypatch.setenv("DETECTRON2_DATASETS", env["DETECTRON2_DATASETS"])
    register_synthetic()
    try:
        cfg = add_panoptic_config(get_cfg())
        cfg.merge_from_file(CONFIG)
        cfg.merge_from_list([*FAST, "SOLVER.MAX_ITER", "10", "OUTPUT_DIR", str(tmp_path),
                             "MODEL.FPN.NORM", "BN", "TEST.PRECISE_BN.ENABLED", "True",
                             "TEST.PRECISE_BN.NUM_ITER", "1", "DATASETS.TEST", "()",
                             "SEED", "7"])

        def batches(trainer, n):
            it = iter(trainer._trainer.data_loader)
            return [[d["file_name"] for d in next(it)] for _ in range(n)]

        first = Trainer(cfg)
        assert any(isinstance(h, hooks.PreciseBN) for h in first._hooks)
        stream = batches(first, 4)
        first.iter = 2
        first.checkpointer.save("model_0000002", iteration=2)

        resumed = Trainer(cfg)
        precise = next(h for h in resumed._hooks if isinstance(h, hooks.PreciseBN))
        resumed.resume_or_load(resume=True)
        assert resumed.start_iter == 3
        assert precise._data_loader.sampler is not resumed._sampler
        assert batches(resumed, 1) == stream[3:4]
    finally:
        monkeypatch.undo()
        register_synthetic()
