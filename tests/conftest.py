import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is not installed: tests import it from here
    sys.path.insert(0, REPO)

from tests.helpers.tools import (  # noqa: E402
    COCO_3X,
    SYNTHETIC_CONFIG,
    TINY_OPTS,
    TINY_TRAIN_OPTS,
)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    # Keep the dataset-validation cache out of the user's home during tests.
    import tempfile

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="panoptic_ext_test_cache_")
    # Tools are scripts; tests run them as subprocesses with the same interpreter.
    os.environ.setdefault("PANOPTIC_EXT_PYTHON", sys.executable)
    # TEST.RUNTIME "auto" means torch here (subprocesses too): hundreds of short-lived models
    # would each pay an ONNX export and compile. The compiled runtimes and "auto" itself are
    # tested explicitly (tests.deploy.test_runtime.py).
    from panoptic_ext.deploy.runtime import AUTO_RUNTIME_ENV

    os.environ.setdefault(AUTO_RUNTIME_ENV, "torch")


@pytest.fixture(autouse=True)
def _package_logs_reach_caplog():
    """Detectron2's setup_logger (run by setup_cfg in earlier tests) stops our logger from
    propagating; caplog listens at the root, so every test starts with propagation on."""
    import logging

    logger = logging.getLogger("panoptic_ext")
    before = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = before


@pytest.fixture
def coco_cfg():
    """Our COCO 3x config on CPU (model built with random weights; nothing downloaded)."""
    from detectron2.config import get_cfg

    from panoptic_ext import add_panoptic_config

    cfg = get_cfg()
    add_panoptic_config(cfg)
    cfg.merge_from_file(COCO_3X)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tiny synthetic dataset root, generated once per test module; never modified."""
    from panoptic_ext.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("pristine")
    generate_synthetic_dataset(root, seed=3, num_train=4, num_val=2, size=64, progress=False)
    return root


@pytest.fixture
def data(pristine, tmp_path):
    """A private copy of `pristine`, registered under the synthetic names; yields its folder."""
    import shutil

    from panoptic_ext.data import register_synthetic

    shutil.copytree(pristine / "synthetic_panoptic", tmp_path / "synthetic_panoptic")
    register_synthetic(tmp_path)
    yield tmp_path / "synthetic_panoptic"
    register_synthetic()


# ---- tests/apps: a 64-px synthetic dataset and a model trained 2 iterations on it ------------


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """(dataset root, weights path): the synthetic dataset and a model trained 2 iterations on
    it (tools/train_net.py in a subprocess), made once per session as training is the slow
    part. Nothing is registered: a module registers the root for its tests (`tiny_root`)."""
    import subprocess

    from panoptic_ext.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("tiny_datasets")
    generate_synthetic_dataset(root, seed=5, num_train=4, num_val=2, size=64, progress=False)
    out = tmp_path_factory.mktemp("tiny_train")
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", SYNTHETIC_CONFIG, *TINY_OPTS,
         *TINY_TRAIN_OPTS, "OUTPUT_DIR", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, str(out / "model_final.pth")


@pytest.fixture(scope="module")
def tiny_root(tiny_trained):
    """`tiny_trained`'s dataset root, registered under the synthetic names for the module."""
    from panoptic_ext.data import register_synthetic

    root = tiny_trained[0]
    register_synthetic(root)
    yield root
    register_synthetic()


@pytest.fixture(scope="module")
def tiny_opts(tiny_trained):
    """`TINY_OPTS` with the trained weights: config overrides for the tools."""
    return [*TINY_OPTS, "MODEL.WEIGHTS", tiny_trained[1]]
