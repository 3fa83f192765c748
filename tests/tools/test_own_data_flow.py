"""Your own COCO-panoptic folder on the standard COCO config, through every tool: train 2
iterations and evaluate, then the run's config.yaml through demo, tune_combine and export."""

import json
import os
import re

import pytest
import torch

from tests.helpers.data import FOLDER_CATEGORIES, write_panoptic_folder
from tests.helpers.tools import COCO_1X, FAST, run_tool

DATASET_IDS = set(FOLDER_CATEGORIES)
THING_IDS = {i for i, c in FOLDER_CATEGORIES.items() if c["isthing"]}
# From scratch (no ImageNet weights here): trainable BN, as frozen BN from random init diverges.
SCRATCH = ["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0"]
LAND = 3  # its contiguous stuff id is 1 (stuff sorted by id: land 3, sky 42; 0 = "things")
# Every segment reaches the merge (64-px images are smaller than COCO's 4096-px stuff limit).
LOW = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
       "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0",
       "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT", "16"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("own")
    specs = []
    for split, n in (("train", 4), ("val", 2)):
        images, panoptic_json, pngs = write_panoptic_folder(base, split, n)
        specs += ["--dataset", f"own_{split}:{images}:{panoptic_json}:{pngs}"]
    out = base / "out"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = run_tool(["tools/train_net.py", "--config-file", COCO_1X, *specs,
                     "MODEL.WEIGHTS", "", *SCRATCH, *FAST, *LOW, "SOLVER.MAX_ITER", "2",
                     "DATASETS.TRAIN", "('own_train_separated',)",
                     "DATASETS.TEST", "('own_val_separated',)", "OUTPUT_DIR", str(out)], env)
    # Two iterations from scratch predict nothing: a semantic head that says "land" everywhere
    # makes a segment whose dataset id (3, not its contiguous 1) every tool must write; it
    # covers more than half of the second validation image, so it also scores.
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    state["model"]["sem_seg_head.predictor.weight"].zero_()
    state["model"]["sem_seg_head.predictor.bias"].copy_(torch.tensor([0.0, 10.0, 0.0]))
    torch.save({"model": state["model"]}, base / "land.pth")
    return {"out": out, "env": env, "log": proc.stdout + proc.stderr, "base": base,
            "config": str(out / "config.yaml"), "weights": str(base / "land.pth")}


def test_trains_and_evaluates_on_the_coco_config(run):
    assert "INPUT.MASK_FORMAT: polygon -> bitmask" in run["log"]
    metrics = json.loads((run["out"] / "inference/own_val_separated/metrics.json").read_text())
    per_class = {k.split("/", 1)[1] for k in metrics["panoptic_seg"] if k.startswith("PQ/")}
    assert per_class == {c["name"] for c in FOLDER_CATEGORIES.values()}
    assert {"bbox", "segm", "sem_seg"} <= set(metrics)


def test_saved_config_runs_the_demo_with_dataset_ids(run, tmp_path):
    images = run["base"] / "images" / "val"
    proc = run_tool(["tools/demo.py", "--config-file", run["config"], "--input", str(images),
                     "--output", str(tmp_path), "--opts", "MODEL.WEIGHTS", run["weights"]],
                    run["env"])
    assert proc.returncode == 0
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert {c["id"]: c["name"] for c in preds["categories"]} == {
        c["id"]: c["name"] for c in FOLDER_CATEGORIES.values()}
    segments = [s for a in preds["annotations"] for s in a["segments_info"]]
    assert len(preds["annotations"]) == 2
    assert LAND in {s["category_id"] for s in segments}
    assert {s["category_id"] for s in segments} <= DATASET_IDS
    for s in segments:
        assert (s["category_id"] in THING_IDS) == s["isthing"]


def test_saved_config_tunes_with_the_evaluators_pq(run, tmp_path):
    run_tool(["tools/train_net.py", "--config-file", run["config"], "--eval-only",
              "MODEL.WEIGHTS", run["weights"], "OUTPUT_DIR", str(tmp_path / "eval")], run["env"])
    metrics = json.loads((tmp_path / "eval/inference/own_val_separated/metrics.json").read_text())
    assert metrics["panoptic_seg"]["PQ/land"] > 0  # a land segment matches the ground truth
    proc = run_tool(["tools/tune_combine.py", "--config-file", run["config"],
                     "--output", str(tmp_path / "tuned.yaml"),
                     "--overlap-thresh", "0.5", "--score-thresh", "0.0", "--stuff-area", "16",
                     "MODEL.WEIGHTS", run["weights"]], run["env"])
    default_pq = float(re.search(r"^default: PQ (-?[\d.]+)", proc.stdout, re.M).group(1))
    # The default setting is the config's merge: the same PQ the evaluator reported.
    assert default_pq == pytest.approx(metrics["panoptic_seg"]["PQ"], abs=1e-3)
    assert (tmp_path / "tuned.yaml").is_file()


def test_saved_config_exports_with_dataset_ids(run, tmp_path):
    exported = tmp_path / "exported"
    run_tool(["tools/export_model.py", "--config-file", run["config"], "--output",
              str(exported), "MODEL.WEIGHTS", run["weights"]], run["env"])
    info = json.loads((exported / "export_info.json").read_text())
    assert {c["id"] for c in info["things"]} == THING_IDS
    assert DATASET_IDS - THING_IDS <= {c["id"] for c in info["stuff"]}
    image = sorted((run["base"] / "images" / "val").iterdir())[0]
    run_tool([str(exported / "run_exported.py"), str(image), "--output", str(tmp_path / "r")],
             run["env"])
    preds = json.loads((tmp_path / "r" / "predictions.json").read_text())
    segments = preds["annotations"][0]["segments_info"]
    assert LAND in {s["category_id"] for s in segments}
    assert {s["category_id"] for s in segments} <= DATASET_IDS
