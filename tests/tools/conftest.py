"""A synthetic dataset and a 2-iteration training run, shared by the tool tests."""

import os

import pytest

from panoptic_ext.data import generate_synthetic_dataset
from tests.helpers.tools import CONFIG, FAST, run_tool


@pytest.fixture(scope="package")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic_dataset(root, seed=3, num_train=6, num_val=3, size=64, progress=False)
    return dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="2")


@pytest.fixture(scope="package")
def trained(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    run_tool(["tools/train_net.py", "--config-file", CONFIG, *FAST, "SOLVER.MAX_ITER", "2",
              "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)], env)
    return out
