"""The analysis tools as users run them: curves.png at the end of training, plot_curves.py,
visualize_data.py, and analyze_results.py on the model or on TEST.SAVE_PREDICTIONS' files."""

import csv
import json
import os

from PIL import Image

from tests.helpers.tools import CONFIG, FAST, run_tool

VAL = "synthetic_panoptic_val_separated"


def _size(path):
    with Image.open(path) as im:
        im.load()
        return im.size


def test_training_writes_curves_and_plot_curves_compares_runs(trained, tmp_path):
    assert _size(trained / "curves.png")[0] > 0
    out = tmp_path / "both.png"
    run_tool(["tools/plot_curves.py", str(trained), str(trained / "metrics.json"),
              "--output", str(out)])
    assert _size(out)[0] > 0


def test_visualize_data_both_sources(env, tmp_path):
    for source, num in (("annotation", 2), ("dataloader", 2)):
        out = tmp_path / source
        run_tool(["tools/visualize_data.py", "--config-file", CONFIG, "--source", source,
                  "--output", str(out), "--num", str(num), *FAST], env)
        names = sorted(os.listdir(out))
        assert len(names) == num and all(n.endswith(".png") for n in names)
        for n in names:
            assert _size(out / n)[0] > 0


def test_saved_predictions_and_analysis_give_the_reported_pq(env, trained, tmp_path):
    weights = str(trained / "model_final.pth")
    evald = tmp_path / "eval"
    run_tool(["tools/train_net.py", "--config-file", CONFIG, "--eval-only", *FAST,
              "MODEL.WEIGHTS", weights, "TEST.SAVE_PREDICTIONS", "True", "OUTPUT_DIR",
              str(evald)], env)
    folder = evald / "inference" / VAL
    assert (folder / "predictions.json").is_file() and os.listdir(folder / "predictions")
    reported = json.loads((folder / "metrics.json").read_text())["panoptic_seg"]["PQ"]

    saved, ran = tmp_path / "saved", tmp_path / "ran"
    run_tool(["tools/analyze_results.py", "--config-file", CONFIG, "--output", str(saved),
              "--predictions", str(folder), "--worst", "2", *FAST], env)
    proc = run_tool(["tools/analyze_results.py", "--config-file", CONFIG, "--output", str(ran),
                     "--worst", "2", *FAST, "MODEL.WEIGHTS", weights], env)
    assert f"PQ {reported:.2f}" in proc.stdout
    for out in (saved, ran):
        rows = list(csv.DictReader(open(out / "per_image.csv")))
        assert len(rows) == 3 and [float(r["PQ"]) for r in rows] == sorted(
            float(r["PQ"]) for r in rows)
        assert len(os.listdir(out / "worst")) == 2
        assert (out / "index.html").is_file() and _size(out / "per_class.png")[0] > 0
    assert (saved / "per_image.csv").read_text() == (ran / "per_image.csv").read_text()
