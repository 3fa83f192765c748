"""tools/benchmark_eval.py and benchmarks/eval_speed.py: both evaluator sets on one model run,
the comparison, the last line. No wall-clock limits: only what holds on any machine."""

import json
import re

from benchmarks.eval_speed import compare_metrics, format_last_line
from tests.helpers.tools import SYNTHETIC_CONFIG, TINY_OPTS, tool_main

LAST = re.compile(r"^evaluator set: ours (\d+\.\d\d)s Detectron2 (\d+\.\d\d)s ratio "
                  r"(\d+\.\d) (same numbers|differ: .*)$")


def test_compare_and_last_line():
    ref = {"panoptic_seg": {"PQ": 50.0, "SQ": 80.0}, "bbox": {"AP": float("nan")}}
    assert compare_metrics({"panoptic_seg": {"PQ": 50.0, "SQ": 80.0, "PQ/a": 1.0},
                            "bbox": {"AP": float("nan")}}, ref) == []
    differ = compare_metrics({"panoptic_seg": {"PQ": 50.1}, "bbox": {"AP": 1.0}}, ref)
    assert differ == ["panoptic_seg/PQ 50.1 vs 50", "panoptic_seg/SQ missing",
                      "bbox/AP 1 vs nan"]
    line = format_last_line(0.5, 6.0, [])
    assert line == "evaluator set: ours 0.50s Detectron2 6.00s ratio 12.0 same numbers"
    assert LAST.match(format_last_line(1.0, 2.0, differ)).group(4).startswith(
        "differ: panoptic_seg/PQ 50.1 vs 50;")


def test_tool_runs_both_sets_on_the_synthetic_val_set(data, tmp_path, capsys):
    main = tool_main("benchmark_eval.py")
    out_json = tmp_path / "report.json"
    rc = main(["--config-file", SYNTHETIC_CONFIG, "--json", str(out_json), *TINY_OPTS,
               "MODEL.WEIGHTS", ""])
    lines = capsys.readouterr().out.strip().splitlines()
    match = LAST.match(lines[-1])
    assert match, lines[-5:]
    assert rc == 0 and match.group(4) == "same numbers"
    report = json.loads(out_json.read_text())
    assert report["images"] == 2 and report["differ"] == []
    # every set of Detectron2's was compared: PQ, box and mask AP, mIoU
    assert set(report["metrics"]) == {"panoptic_seg", "bbox", "segm", "sem_seg"}
    assert float(match.group(1)) == round(report["ours_s"], 2)
