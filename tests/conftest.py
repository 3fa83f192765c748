import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
COCO_3X = os.path.join(CONFIGS, "COCO-PanopticSegmentation", "panoptic_fpn_R_50_3x.yaml")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    # Keep the dataset-validation cache out of the user's home during tests.
    import tempfile

    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="panoptic_ext_test_cache_")
    # Tools are scripts; tests run them as subprocesses with the same interpreter.
    os.environ.setdefault("PANOPTIC_EXT_PYTHON", sys.executable)


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
