"""Paths, small and quick settings, and running the tools as users do (a subprocess) or in
this process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")
CONFIG = os.path.join(CONFIGS, "Synthetic", "panoptic_fpn_R_50.yaml")
COCO_1X = os.path.join(CONFIGS, "COCO-PanopticSegmentation", "panoptic_fpn_R_50_1x.yaml")
COCO_3X = os.path.join(CONFIGS, "COCO-PanopticSegmentation", "panoptic_fpn_R_50_3x.yaml")
# Small and quick: 64-px images, batch 2; the model is the real R-50 Panoptic FPN. Without the
# synthetic config's bf16 autocast: on a CPU without avx512_bf16 it is emulated, ~10x slower
# (tests/engine/test_train_loop.py covers autocast).
NO_AMP = ["SOLVER.AMP.ENABLED", "False"]
FAST = [
    *NO_AMP, "MODEL.DEVICE", "cpu", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
]


def run_tool(args: Sequence[str], env: Mapping[str, str] | None = None, check: bool = True,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """``python <args>`` from the repository root; a failure shows the tool's output."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=dict(env or os.environ),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{list(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


SYNTHETIC_CONFIG = CONFIG
# GroupNorm: with BatchNorm, 2 iterations from scratch leave running statistics that make
# eval-mode activations explode (no proposal survives); GN behaves the same in training and
# eval, so the untrained model gives many low-score detections (hence score thresholds of 0).
TINY_OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "GN", "MODEL.FPN.NORM", "GN",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "20",
]
TINY_TRAIN_OPTS = [
    *NO_AMP, "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.MAX_ITER", "2",
    "SOLVER.CHECKPOINT_PERIOD", "100", "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64", "DATASETS.TEST", "()",  # no final evaluation
]


def tool_main(name: str):
    """tools/`name`'s `main`, to run in this process; its logger setup is skipped (it would bind
    handlers to pytest's captured streams, closed after the test)."""
    import runpy

    main = runpy.run_path(os.path.join(REPO, "tools", name), run_name="tool")["main"]
    main.__globals__["setup_logger"] = lambda *args, **kwargs: None
    return main


def synthetic_cfg(opts):
    """`SYNTHETIC_CONFIG` with our keys and `opts` merged (not frozen)."""
    from detectron2.config import get_cfg

    from panoptic_ext import add_panoptic_config

    cfg = add_panoptic_config(get_cfg())
    cfg.merge_from_file(SYNTHETIC_CONFIG)
    cfg.merge_from_list(opts)
    return cfg


def val_images(root) -> list:
    """Paths of the synthetic dataset's validation images under `root`, sorted."""
    folder = os.path.join(root, "synthetic_panoptic", "val")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
