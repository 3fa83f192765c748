"""tools/demo.py as users run it: a folder of good, grayscale, RGBA and corrupt images."""

import json
import os

import numpy as np
from PIL import Image

from panoptic_ext.formats import read_panoptic_png
from tests.helpers.tools import CONFIG, FAST
from tests.helpers.tools import run_tool as _run


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
        ids = read_panoptic_png(str(out / "panoptic" / ann["file_name"]))
        assert ids.shape == (64, 64)
        present = set(np.unique(ids).tolist()) - {0}
        assert present == {s["id"] for s in ann["segments_info"]}
        for seg in ann["segments_info"]:
            assert int((ids == seg["id"]).sum()) == seg["area"]
            known = {1, 3, 5} if seg["isthing"] else {7, 8, 10}
            assert seg["category_id"] in known
            assert ("score" in seg) == seg["isthing"]
    assert not (out / "broken.jpg").exists()
