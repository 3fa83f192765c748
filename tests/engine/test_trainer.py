"""Training survives: SIGKILL + --resume, SIGTERM save-and-stop, interrupted checkpoint writes,
exact data-order resume, non-finite losses named, and 2-process CPU (gloo) runs."""

import ast
import copy
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, hooks

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


# What Trainer.__init__ mirrors (it cannot call it: see its comment). A failure here means
# Detectron2 changed its constructor: port the change to Trainer.__init__, then update this.
_DETECTRON2_INIT = [
    "super().__init__()",
    "logger = logging.getLogger('detectron2')",
    "if not logger.isEnabledFor(logging.INFO):\n    setup_logger()",
    "cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())",
    "model = self.build_model(cfg)",
    "optimizer = self.build_optimizer(cfg, model)",
    "data_loader = self.build_train_loader(cfg)",
    "model = create_ddp_model(model, broadcast_buffers=False)",
    "self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, "
    "data_loader, optimizer)",
    "self.scheduler = self.build_lr_scheduler(cfg, optimizer)",
    "self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, "
    "trainer=weakref.proxy(self))",
    "self.start_iter = 0",
    "self.max_iter = cfg.SOLVER.MAX_ITER",
    "self.cfg = cfg",
    "self.register_hooks(self.build_hooks())",
]


def test_init_follows_detectron2():
    source = textwrap.dedent(inspect.getsource(DefaultTrainer.__init__))
    body = ast.parse(source).body[0].body
    assert [ast.unparse(s) for s in body[1:]] == _DETECTRON2_INIT  # [0]: the docstring


def test_optimizer_is_detectron2s_sgd_fused_bit_for_bit():
    """Same parameter groups and hyper-parameters as Detectron2's build_optimizer, torch's
    fused kernel on CPU, and the same parameters after a few steps with momentum."""
    cfg = get_cfg()
    add_panoptic_config(cfg)
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                                torch.nn.Conv2d(8, 4, 1))
    twin = copy.deepcopy(model)
    ours, theirs = Trainer.build_optimizer(cfg, model), DefaultTrainer.build_optimizer(cfg, twin)
    assert all(g["fused"] for g in ours.param_groups)
    drop = ("params", "fused", "foreach")
    assert ([{k: v for k, v in g.items() if k not in drop} for g in ours.param_groups]
            == [{k: v for k, v in g.items() if k not in drop} for g in theirs.param_groups])
    x = torch.randn(2, 3, 9, 9)
    for _ in range(4):
        for m, opt in ((model, ours), (twin, theirs)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


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
    # In epochs, for a reference of one process: converted at the config's total batch, then
    # rescaled by Detectron2 to two processes (batch 4, half the iterations).
    _run(["tools/train_net.py", "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}",
          "--config-file", CONFIG, *FAST, "SOLVER.MAX_ITER", "0", "SOLVER.EPOCHS", "1",
          "SOLVER.REFERENCE_WORLD_SIZE", "1", "SOLVER.CHECKPOINT_PERIOD",
          "100", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)], env)
    assert (out / "model_final.pth").is_file()
    assert "1 epoch = 3 iterations at batch 2 over 6 images" in (out / "config.yaml").read_text()
    assert _logged_iterations(out)[-1] == 1  # round(3 / 2) = 2 iterations at batch 4
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


# ---- one run per folder, exact resume after a signal, leftovers ------------------------------

from detectron2.engine import HookBase  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

from panoptic_ext.engine import TrainingInterrupted  # noqa: E402
from panoptic_ext.engine.hooks import GracefulStop  # noqa: E402
from panoptic_ext.engine.trainer import check_output_dir, remove_leftovers, train  # noqa: E402
from panoptic_ext.utils.locks import RunLockedError, run_lock  # noqa: E402


@pytest.fixture
def synthetic(env, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", env["DETECTRON2_DATASETS"])
    register_synthetic()
    yield
    monkeypatch.undo()
    register_synthetic()


def _cfg(out, *extra):
    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list([*FAST, "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "3",
                         "SOLVER.LOG_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
                         "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "SEED", "7",
                         "OUTPUT_DIR", str(out), *extra])
    return cfg


def _rows(out):
    lines = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    return [x for x in lines if "total_loss" in x]


class _SignalAt(HookBase):
    def __init__(self, iteration, signum=signal.SIGTERM):
        self.iteration, self.signum = iteration, signum

    def after_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), self.signum)


class _Record(HookBase):
    """Each iteration's lr and raw total loss (metrics.json holds medians over 20)."""

    def __init__(self, rows):
        self.rows = rows

    def after_step(self):
        storage = self.trainer.storage
        self.rows.append((self.trainer.iter, storage.history("lr").latest(),
                          storage.history("total_loss").latest()))


def test_resume_after_sigterm_has_the_uninterrupted_lr_and_losses(synthetic, tmp_path,
                                                                     monkeypatch):
    rows = []
    build_hooks = Trainer.build_hooks
    def with_record(self):  # right after the scheduler hook, which puts the iteration's lr
        ret = build_hooks(self)
        at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler))
        return [*ret[:at + 1], _Record(rows), *ret[at + 1:]]

    monkeypatch.setattr(Trainer, "build_hooks", with_record)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    seed_all_rng(7)
    train(_cfg(straight))
    expected, rows[:] = list(rows), []
    seed_all_rng(7)
    trainer = Trainer(_cfg(stopped))
    trainer.register_hooks([_SignalAt(1)])
    trainer._hooks.insert(0, trainer._hooks.pop())  # before every other hook, as a real signal
    trainer.resume_or_load(resume=False)
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    assert (stopped / "last_checkpoint").read_text() == "model_0000001.pth"
    assert [r["iteration"] for r in _rows(stopped)] == [0, 1]
    assert "lr" in _rows(stopped)[-1], "the stopped iteration's row is complete"
    # a kill -9 during an earlier save left temp files; the next start removes them
    leftover = stopped / ".model_0000002.pth.k3j_x9.tmp"
    old_style = stopped / "model_0000002.pth.tmp.4242"
    leftover.write_bytes(b"half")
    old_style.write_bytes(b"half")
    train(_cfg(stopped), resume=True)
    assert not leftover.exists() and not old_style.exists()
    assert [r["iteration"] for r in _rows(stopped)] == [0, 1, 2, 3]
    assert [r["lr"] for r in _rows(stopped)] == [r["lr"] for r in _rows(straight)]
    assert [it for it, _, _ in rows] == [0, 1, 2, 3]
    assert [lr for _, lr, _ in rows] == [lr for _, lr, _ in expected]
    assert len({lr for _, lr, _ in expected}) == 4  # warm-up: the lr changes every iteration
    # same seed, one process, NUM_WORKERS 0: the random streams continue too
    assert [loss for _, _, loss in rows] == [loss for _, _, loss in expected]


def test_second_signal_waits_for_the_save(tmp_path):
    """A terminal forwarding Ctrl-C twice, or `timeout`: the checkpoint is still written."""
    saved = []

    class SlowCheckpointer:
        def save(self, name, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the save
            os.kill(os.getpid(), signal.SIGTERM)
            saved.append((name, kwargs))

    stop = GracefulStop(SlowCheckpointer())
    stop.trainer = types.SimpleNamespace(iter=5, _hooks=[])
    previous = signal.getsignal(signal.SIGINT)
    stop.before_train()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # during the step: ignored too
        with pytest.raises(TrainingInterrupted, match="SIGTERM after iteration 5"):
            stop.after_step()
    finally:
        stop.after_train()
    assert saved == [("model_0000005", {"iteration": 5})]
    assert signal.getsignal(signal.SIGINT) is previous


def test_one_run_per_output_dir(synthetic, tmp_path):
    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(RunLockedError, match=rf"{out} is in use by a training run \(pid "
                                                 rf"{os.getpid()}"):
            train(_cfg(out))
    assert not (out / ".run.lock").exists()
    # a lock left by a killed process (its pid is gone) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".run.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    with run_lock(out):
        assert (out / ".run.lock").read_text().split()[0] == str(os.getpid())
    assert not (out / ".run.lock").exists()


def test_fresh_run_into_a_used_folder_is_refused_unless_asked(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("model_0000004.pth", "last_checkpoint", "metrics.json", "config.yaml"):
        (out / name).write_text("x")
    cfg = _cfg(out)
    with pytest.raises(FileExistsError) as info:
        check_output_dir(cfg, resume=False, overwrite=False)
    msg = str(info.value)
    assert str(out) in msg and "last_checkpoint, model_0000004.pth" in msg
    assert "--resume" in msg and "--overwrite" in msg
    check_output_dir(cfg, resume=True, overwrite=False)  # continuing it is fine
    assert (out / "model_0000004.pth").exists()
    check_output_dir(cfg, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    check_output_dir(cfg, resume=False, overwrite=False)  # nothing left to protect


def test_leftover_temp_files_removed(tmp_path):
    keep = ["model_0000001.pth", "last_checkpoint", "metrics.json", ".hidden", "notes.tmp"]
    gone = [".model_0000002.pth.ab_3x.tmp", ".last_checkpoint.q1w2e3.tmp",
            "model_0000002.pth.tmp.31337"]
    for name in keep + gone:
        (tmp_path / name).write_text("x")
    assert remove_leftovers(str(tmp_path)) == sorted(gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_eval_only_refuses_missing_weights(synthetic, tmp_path):
    from panoptic_ext.engine.trainer import evaluate_only
    from panoptic_ext.engine.weights import WeightsError

    cfg = _cfg(tmp_path, "DATASETS.TEST", "('synthetic_panoptic_val_separated',)")
    cfg.MODEL.WEIGHTS = ""
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS is empty: --eval-only needs"):
        evaluate_only(cfg)
    foreign = tmp_path / "foo.pth"
    torch.save({"foo": torch.zeros(1)}, foreign)
    cfg.MODEL.WEIGHTS = str(foreign)
    with pytest.raises(WeightsError, match=f"weights {foreign} hold no tensor of this model"):
        evaluate_only(cfg)


def test_uncertainty_balancing_learns_logs_and_saves_its_weights(synthetic, tmp_path):
    out = tmp_path / "balanced"
    train(_cfg(out, "SOLVER.MAX_ITER", "2", "MODEL.PANOPTIC_EXT.LOSS_BALANCING", "uncertainty"))
    rows = _rows(out)
    # metrics.json: the effective weights, fixed (SEM_SEG_HEAD.LOSS_WEIGHT 0.5) x learned
    assert rows[0]["loss_weight/loss_sem_seg"] == 0.5
    assert rows[1]["loss_weight/loss_sem_seg"] != 0.5
    assert rows[1]["loss_weight/loss_mask"] != 1.0
    assert "loss_balancing_semantic" in rows[1]
    state = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert state["loss_balancer.log_var_semantic"].item() != 0.0  # optimized, saved
    # a resume with another balancing names the setting, not torch's optimizer groups
    from panoptic_ext.engine import Trainer

    with pytest.raises(ValueError, match=r"MODEL.PANOPTIC_EXT.LOSS_BALANCING 'uncertainty' in "
                                         rf"the checkpoint in {out}, 'fixed' now"):
        Trainer(_cfg(out, "SOLVER.MAX_ITER", "3")).resume_or_load(resume=True)
