"""One server for the serve tests (the session's tiny trained model, 64-px synthetic images),
and what tools/demo.py writes for the same images: the answers must equal its files."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests.helpers.serve import SERVE_OPTS, SharedServer, tiny_server_args
from tests.helpers.tools import SYNTHETIC_CONFIG, tool_main, val_images


@pytest.fixture(scope="package")
def serve_env(tiny_trained):
    root, _ = tiny_trained
    return dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="2")


@pytest.fixture(scope="package")
def shared_server(tiny_trained, serve_env, tmp_path_factory):
    """tools/serve.py on the tiny model, batching up to 16 requests: one for the package."""
    args = [*tiny_server_args(tiny_trained[1]), "--max-batch-size", "16", "--max-wait-ms", "20"]
    shared = SharedServer(args, serve_env, str(tmp_path_factory.mktemp("serve_logs")))
    yield shared
    shared.close()


@pytest.fixture
def server(shared_server):
    """The package's server, running."""
    return shared_server.get()


@pytest.fixture(scope="package")
def images(tiny_trained, tmp_path_factory):
    """The validation images, plus one of them as a 16-bit grayscale PNG (the reader's
    scaling, not PIL's clipping, must reach the model)."""
    files = val_images(tiny_trained[0])
    folder = tmp_path_factory.mktemp("serve_images")
    gray = np.asarray(Image.open(files[0]).convert("L"), dtype=np.uint16) * 257
    path = folder / "gray16.png"
    Image.fromarray(gray).save(path)
    return [*files, str(path)]


@pytest.fixture(scope="package")
def demo_outputs(tiny_trained, images, tmp_path_factory):
    """tools/demo.py's predictions.json (by stem) and its output folder for `images`."""
    from panoptic_ext.data import register_synthetic

    out = tmp_path_factory.mktemp("demo_out")
    register_synthetic(tiny_trained[0])
    try:
        code = tool_main("demo.py")(["--config-file", SYNTHETIC_CONFIG, "--input", *images,
                                     "--output", str(out), "--opts", *SERVE_OPTS,
                                     "MODEL.WEIGHTS", tiny_trained[1]])
    finally:
        register_synthetic()
    assert code == 0
    preds = json.loads((out / "predictions.json").read_text())
    return {a["image_id"]: a for a in preds["annotations"]}, out, preds["categories"]
