"""TorchScript export (tools/export_model.py, panoptic_ext.apps.export): the traced model gives
the eager model's panoptic result, and its runner works without Detectron2."""

import json
import subprocess
import sys

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from PIL import Image

from panoptic_ext.data import rgb_to_id
from tests.helpers.tools import SYNTHETIC_CONFIG, synthetic_cfg, tool_main, val_images


def test_export_matches_eager_and_runs_without_detectron2(tiny_root, tiny_opts, tmp_path,
                                                          capsys):
    out = tmp_path / "exported"
    images = val_images(tiny_root)
    # every detection reaches the merge, so thing segments exist even for a 2-iteration model
    opts = [*tiny_opts, "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0"]
    rc = tool_main("export_model.py")(["--config-file", SYNTHETIC_CONFIG, "--output", str(out),
                                       "--sample-image", images[0], *opts])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "traced == eager: True (pixel agreement 100.0000%)" in text

    # the runner, with Detectron2 and panoptic_ext unimportable, on another image and on one
    # of another size (resized on the way in, result at the original size)
    odd = np.ascontiguousarray(read_image(images[1], format="RGB")[5:55, 3:])  # 50 x 61
    Image.fromarray(odd).save(tmp_path / "odd.png")
    inputs = [images[1], str(tmp_path / "odd.png")]
    res = tmp_path / "res"
    code = (
        "import runpy, sys\n"
        "sys.modules['detectron2'] = None; sys.modules['panoptic_ext'] = None\n"
        f"sys.argv = ['run_exported.py', *{inputs!r}, '--output', {str(res)!r}]\n"
        "try:\n"
        f"    runpy.run_path({str(out / 'run_exported.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "loaded = [m for m, v in sys.modules.items() if v is not None\n"
        "          and m.split('.')[0] in ('detectron2', 'panoptic_ext')]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # ... gives the eager model's panoptic result (run as DefaultPredictor runs it, which the
    # runner's resize follows): same map, same segments
    cfg = synthetic_cfg(opts)
    predictor = DefaultPredictor(cfg)
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    to_dataset = {True: {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()},
                  False: {v: k for k, v in meta.stuff_dataset_id_to_contiguous_id.items()}}
    preds = json.loads((res / "predictions.json").read_text())
    things = 0
    for path, ann in zip(inputs, preds["annotations"], strict=True):
        pan, segments = predictor(read_image(path, format="BGR"))["panoptic_seg"]
        ids = rgb_to_id(np.asarray(Image.open(res / "panoptic" / ann["file_name"])))
        assert ids.shape == tuple(pan.shape) and np.array_equal(ids, pan.numpy())
        expected = [
            {"id": s["id"], "category_id": to_dataset[s["isthing"]][s["category_id"]],
             "isthing": s["isthing"], "score": s.get("score"), "area": int((pan == s["id"]).sum())}
            for s in segments if (pan == s["id"]).any()
        ]
        got = [{k: s.get(k) for k in ("id", "category_id", "isthing", "score", "area")}
               for s in ann["segments_info"]]
        assert got == expected
        things += sum(s["isthing"] for s in got)
    assert things > 0  # the mask paste and overlap steps ran
