"""tools/benchmark.py's logic: both models from one config, stage timings, output agreement."""

import json
import os

import pytest
import torch

from panoptic_ext.benchmark import STAGES, compare_panoptic, format_report, run_benchmark, setup_cfg

from .conftest import CONFIGS


def test_side_by_side_on_a_small_input():
    cfg = setup_cfg(os.path.join(CONFIGS, "Synthetic/panoptic_fpn_R_50.yaml"), [
        "MODEL.WEIGHTS", "", "DATASETS.TEST", "('no_such_dataset',)",
        # exact mode: the outputs must then agree everywhere
        "MODEL.PANOPTIC_EXT.CHANNELS_LAST", "False", "MODEL.PANOPTIC_EXT.FUSE_NORM", "False",
    ])
    report = run_benchmark(cfg, num_images=2, size=(64, 96), warmup=1,
                           outputs=("panoptic_seg",))
    assert report["images"] == "random" and report["outputs"] == ["panoptic_seg"]
    for name in ("d2", "ours"):
        assert set(report[name]["stages"]) == set(STAGES)
        assert report[name]["total"]["min"] <= report[name]["total"]["median"]
        assert report[name]["stages"]["backbone+FPN"] > 0
        bb = report[name]["stage_summary"]["backbone+FPN"]
        assert bb["min"] <= report[name]["stages"]["backbone+FPN"] <= bb["max"]
    assert report["ours"]["stages"]["combine"] > 0 and report["d2"]["stages"]["combine"] > 0
    assert report["agreement"]["pixel_agreement"] == 1.0
    assert report["agreement"]["pq"] == pytest.approx(100.0)
    json.dumps(report)  # --json prints it
    text = format_report(report)
    assert "end-to-end median" in text and "PQ 100.00" in text


def test_compare_panoptic_counts_disagreement():
    pan = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]], dtype=torch.int32)
    segs = [{"id": 1, "isthing": True, "category_id": 3},
            {"id": 2, "isthing": False, "category_id": 3}]  # same id, thing vs stuff: distinct
    other = pan.clone()
    other[:, 1] = 2
    got = compare_panoptic([(other, segs)], [(pan, segs)])
    assert got["pixel_agreement"] == pytest.approx(6 / 8)
    assert 0 < got["pq"] < 100


def test_combine_only_benchmark_reports_identical_merges(capsys):
    import importlib.util

    from panoptic_ext.benchmark import format_combine_report, run_combine_benchmark

    rows = run_combine_benchmark((0, 3, 25), size=(96, 128), repeats=1, num_stuff=6)
    assert [r["instances"] for r in rows] == [0, 3, 25]
    assert all(r["identical"] for r in rows)
    assert rows[2]["thing_segments"] > 0 and rows[2]["d2_ms"] > 0 and rows[2]["ours_ms"] > 0
    assert "speedup" in format_combine_report(rows)

    path = os.path.join(os.path.dirname(CONFIGS), "tools", "benchmark.py")
    spec = importlib.util.spec_from_file_location("bench_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cfg = os.path.join(CONFIGS, "Synthetic", "panoptic_fpn_R_50.yaml")
    assert tool.main(["--config-file", cfg, "--combine-only", "4", "--repeats", "1",
                      "--size", "64x80", "--json", "MODEL.DEVICE", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["instances"] == 4 and out[0]["identical"] is True
