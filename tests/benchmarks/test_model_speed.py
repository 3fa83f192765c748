"""benchmarks/model_speed.py and tools/benchmark.py: both models from one config, stage
timings, output agreement. No wall-clock limits: only what holds on any machine."""

import importlib.util
import itertools
import json
import os

import numpy as np
import pytest
import torch
from detectron2.modeling.meta_arch import panoptic_fpn as d2_panoptic_fpn

from benchmarks import model_speed
from benchmarks.model_speed import (
    STAGES,
    InputError,
    StageTimer,
    compare_panoptic,
    format_combine_report,
    format_report,
    load_input_files,
    run_benchmark,
    run_combine_benchmark,
)
from panoptic_ext.engine.defaults import setup_cfg
from panoptic_ext.modeling import meta_arch as ext_meta_arch
from tests.helpers.tools import CONFIGS, REPO

SYNTHETIC = os.path.join(CONFIGS, "Synthetic", "panoptic_fpn_R_50.yaml")
# --input files are resized as DefaultPredictor does: to 64 short side, at most 96
SMALL_TEST_SIZE = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "bench_tool", os.path.join(REPO, "tools", "benchmark.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_stage_timer_counts_nested_stages_once(monkeypatch):
    clock = iter([0.0, 1.0, 6.0, 10.0, 12.0, 20.0, 25.0])
    monkeypatch.setattr(model_speed.time, "perf_counter", lambda: next(clock))
    syncs = []
    timer = StageTimer(sync=lambda: syncs.append(1))
    timer.start("outer")  # 0
    timer.start("inner")  # 1
    timer.stop()  # inside "outer", so not counted on its own (reads no clock)
    timer.stop()  # 6
    timer.start("inner")  # 10
    timer.stop()  # 12
    assert timer.times == {"outer": 6.0, "inner": 2.0}
    assert len(syncs) == 6  # every start and stop waits for the device

    def boom():
        raise ValueError("x")

    with pytest.raises(ValueError):
        timer.wrap("outer", boom)()  # 20 .. 25: stopped although it raised
    assert timer.times["outer"] == 11.0 and timer._stack == []
    timer.reset()
    assert timer.times == {}


def test_side_by_side_on_a_small_input():
    originals = (ext_meta_arch.paste_for_combine, ext_meta_arch.semantic_argmax,
                 d2_panoptic_fpn.combine_semantic_and_instance_outputs,
                 d2_panoptic_fpn.sem_seg_postprocess)
    cfg = setup_cfg(SYNTHETIC, [
        "MODEL.WEIGHTS", "", "DATASETS.TEST", "('no_such_dataset',)",
        # exact mode: the outputs must then agree everywhere
        "MODEL.PANOPTIC_EXT.CHANNELS_LAST", "False", "MODEL.PANOPTIC_EXT.FUSE_NORM", "False",
    ])
    report = run_benchmark(cfg, num_images=2, size=(64, 96), warmup=1,
                           outputs=("panoptic_seg",), peak_size=(16, 24))
    # the instrumentation is gone again
    assert originals == (ext_meta_arch.paste_for_combine, ext_meta_arch.semantic_argmax,
                         d2_panoptic_fpn.combine_semantic_and_instance_outputs,
                         d2_panoptic_fpn.sem_seg_postprocess)

    assert report["images"] == "random" and report["outputs"] == ["panoptic_seg"]
    assert report["num_images"] == 2 and report["size"] == [64, 96]
    assert len(report["detections_per_image"]) == 2
    assert len(report["things_in_panoptic_d2"]) == 2
    # generated inputs: named, output at the input size, warm-up on the first, order flips
    assert [i["name"] for i in report["inputs"]] == ["random #0", "random #1"]
    assert all(i["input_size"] == i["output_size"] == [64, 96] for i in report["inputs"])
    assert report["warmup_rounds"] == 1 and report["warmup_inputs"] == ["random #0"]
    assert [r["d2_first"] for r in report["per_image"]] == [True, False]
    for r, things in zip(report["per_image"], report["things_in_panoptic_d2"], strict=True):
        assert r["ours"]["detections"] is None  # instances not asked for
        assert r["d2"]["things"] == r["ours"]["things"] == things
        assert r["d2"]["stuff"] == r["ours"]["stuff"]
    for name in ("d2", "ours"):
        r = report[name]
        assert list(r["stages"]) == list(STAGES) and list(r["stage_summary"]) == list(STAGES)
        # every image's stages, "other" included, add up to its total; with two images the
        # median is the mean, so the medians add up to the median total
        assert sum(r["stages"].values()) == pytest.approx(r["total"]["median"], rel=1e-6)
        assert r["total"]["median"] == pytest.approx((r["total"]["min"] + r["total"]["max"]) / 2)
        for s in STAGES:
            st = r["stage_summary"][s]
            assert r["stages"][s] == pytest.approx((st["min"] + st["max"]) / 2)
        # a stage timed inside another one would be counted twice and push "other" below 0
        assert r["stage_summary"]["other"]["min"] >= 0
        # every stage's hook or patch fired (a function moved elsewhere would read 0 here)
        for s in STAGES[:-1]:
            assert r["stage_summary"][s]["min"] > 0, (name, s)
    assert report["ratio_median"] == report["ours"]["total"]["median"] / \
        report["d2"]["total"]["median"]
    assert len(report["ratio_per_image"]) == 2
    ours, d2 = report["ours"]["total"], report["d2"]["total"]
    for ratio in report["ratio_per_image"]:
        assert any(ratio == pytest.approx(ours[a] / d2[b])
                   for a, b in itertools.product(("min", "max"), repeat=2))

    ag = report["agreement"]
    assert ag["pixel_agreement"] == 1.0
    assert ag["pq"] == pytest.approx(100.0)
    assert ag["segments_ours"] == ag["segments_detectron2"]

    # --json prints it: plain JSON types only, nothing lost on the way
    assert json.loads(json.dumps(report)) == report
    assert {"weights", "device", "threads", "precision", "d2", "ours", "ratio_median",
            "agreement"} <= set(report)

    text = format_report(report).splitlines()
    for s in STAGES:
        assert sum(line.startswith(s) for line in text) == 1, s
    assert any(line.startswith("end-to-end median") for line in text)
    assert "2 x 64x96 (random; outputs at that size, no resize)" in text[1]
    assert text[3].startswith("warm-up (untimed): 1 round(s) of each model on random #0")
    d2_dets = report["detections_per_image"][1]
    assert any(line.startswith("#2") and "random #1" in line and f" {d2_dets}/- " in line
               for line in text)
    assert any("pixels 100.000%" in line and "PQ 100.00" in line for line in text)

    # the arithmetic limit: stage time over (fvcore multiply-adds / measured 3x3-conv peak)
    assert report["runtime"] == "torch" and "runtime torch" in text[2]
    lim = report["limit"]
    peak = lim["peak_macs_per_s"]["fp32"]
    assert peak > 0 and not lim["compiled_dense"]
    macs = lim["macs"]
    assert macs["backbone+FPN"] > macs["semantic head"] > 0 and macs["RPN"] > 0
    assert lim["total_macs"] == pytest.approx(sum(macs.values()))
    for name in ("d2", "ours"):
        t = report[name]["stages"]
        assert lim[name]["backbone+FPN"] == pytest.approx(t["backbone+FPN"]
                                                          / (macs["backbone+FPN"] / peak))
        assert lim[name]["end-to-end"] == pytest.approx(report[name]["total"]["median"]
                                                        / (lim["total_macs"] / peak))
    assert any(line.startswith("arithmetic limit: 3x3-conv peak") for line in text)
    rows = [line.split() for line in text if line.startswith("  ")]
    assert [r[0] for r in rows] == ["backbone+FPN", "semantic", "RPN", "ROI", "end-to-end"]
    assert rows[0][1] == f"{lim['d2']['backbone+FPN']:.2f}x"


def _write_images(folder) -> tuple[str, str]:
    """A 40x60 PNG and a 48x40 JPEG of noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    png, jpg = str(folder / "wide.png"), str(folder / "tall.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(png)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(jpg)
    return png, jpg


def test_input_files_are_timed_as_the_predictor_feeds_them(tmp_path):
    png, jpg = _write_images(tmp_path)
    cfg = setup_cfg(SYNTHETIC, ["MODEL.WEIGHTS", "", *SMALL_TEST_SIZE])
    inputs = load_input_files(cfg, [str(tmp_path / "*.png"), jpg])
    # DefaultPredictor: ResizeShortestEdge 64 / 96 of the BGR file, outputs at its own size
    assert [(b.name, b.input_size, (b.height, b.width)) for b in inputs] == [
        (png, (64, 96), (40, 60)), (jpg, (77, 64), (48, 40))]
    assert inputs[0].image.dtype == torch.float32

    report = run_benchmark(cfg, num_images=3, warmup=1, inputs=inputs, peak_size=(16, 24))
    assert report["size"] is None and report["num_images"] == 3
    assert report["inputs"] == [
        {"name": png, "input_size": [64, 96], "output_size": [40, 60]},
        {"name": jpg, "input_size": [77, 64], "output_size": [48, 40]}]
    assert report["warmup_inputs"] == [png, jpg]  # every distinct input, before timing
    rows = report["per_image"]
    assert [r["name"] for r in rows] == [png, jpg, png]  # cycled
    assert [r["d2_first"] for r in rows] == [True, False, False]  # each file both orders
    for r in rows:
        assert r["d2"]["detections"] == r["ours"]["detections"]  # all outputs asked for
        assert r["d2"]["things"] <= r["d2"]["detections"]
    ag = report["agreement"]
    assert ag["segments_detectron2"] == sum(r["d2"]["things"] + r["d2"]["stuff"] for r in rows)
    assert ag["segments_ours"] == sum(r["ours"]["things"] + r["ours"]["stuff"] for r in rows)
    assert report["limit"]["input_sizes"] == [[64, 96], [77, 64]]
    assert json.loads(json.dumps(report)) == report

    text = format_report(report).splitlines()
    assert "3 timed (2 file(s), cycled; resized as DefaultPredictor (INPUT.MIN_SIZE_TEST 64, " \
        "MAX_SIZE_TEST 96), outputs at the original size)" in text[1]
    assert "warm-up (untimed): 1 round(s) of each model on wide.png, tall.jpg" in text[3]
    assert f"- {png}: 64x96 <- 40x60" in text and f"- {jpg}: 77x64 <- 48x40" in text
    last = rows[2]
    dets = f"{last['d2']['detections']}/{last['ours']['detections']}"
    segs = (f"{last['d2']['things']}+{last['d2']['stuff']} / "
            f"{last['ours']['things']}+{last['ours']['stuff']}")
    assert any(line.startswith("#3") and "wide.png" in line and "ours" in line
               and dets in line and segs in line for line in text)
    assert any("mean over the timed images at 64x96, 77x64" in line for line in text)


def test_input_order_gives_every_file_both_orders():
    for n in (1, 2, 3, 4):
        firsts: dict[int, list[bool]] = {}
        for k in range(2 * n):
            firsts.setdefault(k % n, []).append(model_speed._d2_first(k, n))
        assert all(sorted(f) == [False, True] for f in firsts.values()), n
        assert model_speed._d2_first(0, n) and not model_speed._d2_first(1, n)


def test_tool_times_input_files_once_each_by_default(tmp_path, capsys):
    png, jpg = _write_images(tmp_path)
    tool = _load_tool()
    assert tool.main(["--config-file", SYNTHETIC, "--input", png, jpg, "--no-limit", "--json",
                      "MODEL.WEIGHTS", "", *SMALL_TEST_SIZE]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 2 and "limit" not in report
    assert report["weights"].startswith("random (tamed)")  # the overrides after the files
    assert [r["name"] for r in report["per_image"]] == [png, jpg]
    assert [r["output_size"] for r in report["per_image"]] == [[40, 60], [48, 40]]


def test_stage_macs_count_the_box_head_linear_layers():
    cfg = setup_cfg(SYNTHETIC, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu",  # a small R-18
                                "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS",
                                "64", "MODEL.FPN.OUT_CHANNELS", "32"])
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    macs = model_speed.stage_macs(model, (64, 96), proposals=7, detections=3)
    rh = model.roi_heads
    linear = [m for m in (*rh.box_head.modules(), *rh.box_predictor.modules())
              if isinstance(m, torch.nn.Linear)]
    assert macs["box head"] == 7 * sum(m.in_features * m.out_features for m in linear)
    # twice the detections, twice the mask head; 50x90 pads to the same 64x96 backbone input
    again = model_speed.stage_macs(model, (50, 90), proposals=7, detections=6)
    assert again["mask head"] == pytest.approx(2 * macs["mask head"]) and macs["mask head"] > 0
    assert again["backbone+FPN"] == macs["backbone+FPN"] > 0


def test_compare_panoptic_scores_a_known_disagreement():
    pan = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]], dtype=torch.int32)
    segs = [{"id": 1, "isthing": True, "category_id": 3},
            {"id": 2, "isthing": False, "category_id": 3}]  # same id, thing vs stuff: distinct
    same = compare_panoptic([(pan, segs)], [(pan.clone(), segs)])
    assert same["pixel_agreement"] == 1.0 and same["pq"] == pytest.approx(100.0)

    other = pan.clone()
    other[:, 1] = 2  # the thing loses half its pixels to the stuff segment
    got = compare_panoptic([(other, segs)], [(pan, segs)])
    assert got["pixel_agreement"] == pytest.approx(6 / 8)
    # thing: IoU 2/4 is no match (PQ 0); stuff: IoU 4/6 matches (PQ 2/3); All is their mean
    assert got["pq_things"] == pytest.approx(0.0)
    assert got["pq_stuff"] == pytest.approx(100 * 2 / 3)
    assert got["pq"] == pytest.approx(100 / 3)
    assert got["segments_ours"] == got["segments_detectron2"] == 2


def test_combine_only_benchmark_reports_identical_merges():
    rows = run_combine_benchmark((0, 3, 25), size=(96, 128), repeats=1, num_stuff=6)
    assert [r["instances"] for r in rows] == [0, 3, 25]
    assert all(r["identical"] for r in rows)
    assert rows[0]["thing_segments"] == 0
    assert 0 < rows[2]["thing_segments"] <= 25
    for r in rows:
        assert r["speedup"] == r["d2_ms"] / r["ours_ms"]
        assert r["size"] == [96, 128] and r["device"] == "cpu"
    text = format_combine_report(rows).splitlines()
    assert "96x128" in text[0] and len(text) == 2 + len(rows)
    assert [int(line.split()[0]) for line in text[2:]] == [0, 3, 25]
    assert format_combine_report([]) == ""


def test_tool_combine_only_prints_json(capsys):
    tool = _load_tool()
    assert tool.main(["--config-file", SYNTHETIC, "--combine-only", "4", "--repeats", "1",
                      "--size", "64x80", "--json", "MODEL.DEVICE", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["instances"] == 4 and out[0]["identical"] is True
    assert out[0]["size"] == [64, 80]


@pytest.mark.parametrize("argv, message", [
    (["--num-images", "0"], "--num-images must be >= 1"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["MODEL.DEVICE"], "KEY VALUE pairs"),
    (["--size", "16x16"], "at least 32x32"),
])
def test_tool_rejects_bad_arguments(argv, message, capsys):
    tool = _load_tool()
    with pytest.raises(SystemExit) as exc:
        tool.main(["--config-file", SYNTHETIC, *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "no match", "not an image", "empty folder",
                                  "with --size", "with --combine-only", "negative warm-up",
                                  "no file before the overrides"])
def test_tool_names_a_bad_input(case, tmp_path, capsys):
    png, _ = _write_images(tmp_path)
    bad = tmp_path / "broken.jpg"
    bad.write_text("not a JPEG")
    (tmp_path / "empty").mkdir()
    argv, message = {
        "missing": (["--input", png, str(tmp_path / "gone.jpg")],
                    f"{tmp_path / 'gone.jpg'}: no such file"),
        "no match": (["--input", str(tmp_path / "*.webp")],
                     f"{tmp_path / '*.webp'}: no such file, and no file matches it"),
        "not an image": (["--input", str(tmp_path / "*.jpg")],
                         f"--input {bad}: cannot read it as an image"),
        "empty folder": (["--input", str(tmp_path / "empty")],
                         f"{tmp_path / 'empty'}: folder has no image files"),
        "with --size": (["--input", png, "--size", "64x64"],
                        "--size does not apply with --input"),
        "with --combine-only": (["--input", png, "--combine-only", "3"],
                                "--input does not apply with --combine-only"),
        "negative warm-up": (["--warmup", "-1"], "--warmup must be >= 0"),
        "no file before the overrides": (["--input", "MODEL.DEVICE", "cpu"],
                                         "--input: expected image files before the overrides"),
    }[case]
    tool = _load_tool()
    with pytest.raises(SystemExit) as exc:
        tool.main(["--config-file", SYNTHETIC, "MODEL.WEIGHTS", "", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_load_input_files_raises_naming_the_path(tmp_path):
    cfg = setup_cfg(SYNTHETIC, ["MODEL.WEIGHTS", ""])
    with pytest.raises(InputError, match="nothing-here"):
        load_input_files(cfg, [str(tmp_path / "nothing-here*.png")])


def test_report_says_when_one_time_costs_are_timed():
    lines = model_speed._protocol_lines({"warmup_rounds": 0, "warmup_inputs": [],
                                         "size": [64, 96], "inputs": []})
    assert lines == ["warm-up: none, so the first timed run of each model holds its one-time "
                     "costs (for ours, a compiled TEST.RUNTIME's graph export and compile)"]
