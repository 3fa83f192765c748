"""tools/plot_curves.py's logic: one line per (run, logged key), from metrics.json."""

import json
import logging

import numpy as np
from PIL import Image

from panoptic_ext.apps.curves import (
    curve_panels,
    draw_curves,
    load_metrics,
    plot_curves,
    write_training_curves,
)

LOSSES = ("loss_cls", "loss_mask", "loss_sem_seg")


def _write_run(folder, iters=(9, 19, 29, 39), evals=(19, 39), scale=1.0):
    folder.mkdir(parents=True)
    lines = []
    for it in iters:
        rec = {"iteration": it, "lr": 0.01 * scale, "time": 0.5, "data_time": 0.01,
               "eta_seconds": 3.0, "data/skipped_samples": 0}
        rec.update({k: scale / (it + 1) for k in LOSSES})
        rec["total_loss"] = sum(rec[k] for k in LOSSES)
        lines.append(json.dumps(rec))
        if it in evals:  # EvalHook's line: flattened results, same iteration
            lines.append(json.dumps({"iteration": it, "panoptic_seg/PQ": it, "panoptic_seg/PQ_th":
                                     it / 2, "panoptic_seg/PQ_st": it * 1.5,
                                     "panoptic_seg/PQ/circle": 1.0, "bbox/AP": 3.0}))
    (folder / "metrics.json").write_text("\n".join(lines) + "\n" + '{"iteration": 4')  # cut
    return folder


def test_load_metrics_skips_a_cut_line_and_keeps_eval_lines(tmp_path):
    run = _write_run(tmp_path / "a")
    recs = load_metrics(str(run))
    assert len(recs) == 4 + 2
    assert [r["iteration"] for r in recs if "panoptic_seg/PQ" in r] == [19, 39]


def test_one_line_per_logged_key_and_run(tmp_path):
    runs = {"a": load_metrics(str(_write_run(tmp_path / "a"))),
            "b": load_metrics(str(_write_run(tmp_path / "b", scale=2.0)))}
    panels = curve_panels(runs["a"])
    assert panels == {**{k: [k] for k in LOSSES}, "total_loss": ["total_loss"], "lr": ["lr"],
                      "time": ["time"], "data_time": ["data_time"],
                      "PQ": ["panoptic_seg/PQ", "panoptic_seg/PQ_st", "panoptic_seg/PQ_th"]}
    fig = draw_curves(runs)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == set(panels)
    for title, keys in panels.items():
        lines = axes[title].get_lines()
        assert len(lines) == len(keys) * len(runs), title
    pq = axes["PQ"].get_lines()
    assert [ln.get_label() for ln in pq] == [f"{r}: {k}" for r in "ab" for k in
                                             ("PQ", "PQ_st", "PQ_th")]
    assert list(pq[0].get_xdata()) == [19, 39] and list(pq[0].get_ydata()) == [19, 39]
    assert np.allclose(axes["lr"].get_lines()[1].get_ydata(), 0.02)


def test_plot_curves_writes_a_png_of_the_figure_size(tmp_path):
    a, b = _write_run(tmp_path / "x" / "run"), _write_run(tmp_path / "y" / "run")
    out = tmp_path / "curves.png"
    fig = plot_curves([str(a), str(b / "metrics.json")], str(out))
    with Image.open(out) as im:
        im.load()
        w, h = fig.get_size_inches() * fig.dpi
        assert im.size == (round(w), round(h)) == (1600, 560)  # 4 columns x 2 rows of panels
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    assert labels == [str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")]


def test_training_curves_failure_only_warns(tmp_path, caplog):
    run = _write_run(tmp_path / "run")
    assert write_training_curves(str(run)) == str(run / "curves.png")
    assert (run / "curves.png").is_file()
    with caplog.at_level(logging.WARNING, logger="panoptic_ext"):
        assert write_training_curves(str(tmp_path / "nothing")) is None
    assert "Could not plot the training curves" in caplog.text


def test_missing_empty_or_malformed_metrics_and_bad_output_named(tmp_path, capsys):
    from tests.helpers.tools import tool_main

    plot = tool_main("plot_curves.py")
    out = str(tmp_path / "c.png")
    assert plot([str(tmp_path / "none"), "--output", out]) == 1
    assert f"{tmp_path / 'none'} does not exist: give a training" in capsys.readouterr().err
    for name, text in (("empty", ""), ("malformed", "{oops\n[1, 2]\n"), ("binary", "\x00\xff")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(text)
        assert plot([str(tmp_path / name), "--output", out]) == 1
        assert f"{tmp_path / name / 'metrics.json'} holds no metrics line" in \
            capsys.readouterr().err
    run = _write_run(tmp_path / "run")
    assert plot([str(run), "--output", str(tmp_path)]) == 1  # a folder
    assert f"--output: {tmp_path} is a folder" in capsys.readouterr().err
    assert plot([str(run), "--output", str(run / "metrics.json")]) == 1
    assert "would replace the input" in capsys.readouterr().err
