"""Training curves from ``metrics.json``: every loss, the total loss, the learning rate, time
and data_time per iteration, and PQ at each evaluation; several runs on one figure.

The logic behind tools/plot_curves.py; ``tools/train_net.py`` calls
:func:`write_training_curves` when training ends.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..utils.io import atomic_write
from ..utils.paths import check_output_file, refuse_replacing_inputs

__all__ = ["curve_panels", "draw_curves", "load_metrics", "plot_curves", "write_training_curves"]

logger = logging.getLogger(__name__)

_PER_ITER = ("total_loss", "lr", "time", "data_time")
# PQ summary keys of an evaluation, as EvalHook flattens them ("<dataset>/" first with several).
_PQ_KEY = re.compile(r"(^|/)panoptic_seg/(PQ|PQ_th|PQ_st)$")


def load_metrics(path: str) -> list[dict[str, Any]]:
    """The JSON lines of a ``metrics.json`` (a file or its run folder); a line cut by a kill is
    skipped. Later lines for an iteration already seen replace it (a resumed run). A missing
    file, or one without any metrics line (empty, not metrics.json), is an error naming it."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    by_iter: dict[tuple[int, bool], dict] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("iteration"), int | float):
                    is_eval = any(_PQ_KEY.search(k) for k in rec)
                    by_iter.setdefault((int(rec["iteration"]), is_eval), {}).update(rec)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: give a training OUTPUT_DIR (it "
                                "holds metrics.json) or the metrics.json file") from None
    if not by_iter:
        raise ValueError(f"{path} holds no metrics line (a JSON object with an \"iteration\" "
                         "per line, as training writes it): empty, or not a metrics.json")
    return [by_iter[k] for k in sorted(by_iter)]


def curve_panels(records: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Panel title -> the logged keys drawn in it (one line each): one panel per loss, then
    total loss, lr, time, data_time, and one "PQ" panel with PQ, PQ_th, PQ_st."""
    keys = {k for r in records for k, v in r.items() if isinstance(v, int | float)}
    panels: dict[str, list[str]] = {k: [k] for k in sorted(keys) if k.startswith("loss_")}
    panels.update({k: [k] for k in _PER_ITER if k in keys})
    pq = sorted(k for k in keys if _PQ_KEY.search(k))
    if pq:
        panels["PQ"] = pq
    return panels


def draw_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
    """A matplotlib Figure: one axes per panel of :func:`curve_panels` over all runs, one
    line per (run, logged key), against the iteration; 400 x 280 px per panel, 4 columns."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = curve_panels([r for recs in runs.values() for r in recs])
    if not panels:
        raise ValueError("no losses, lr, times or PQ in the metrics: nothing to plot")
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(400 * cols / 100, 280 * rows / 100), dpi=100)  # 400 x 280 px each
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    several = len(runs) > 1
    for ax, (title, keys) in zip(axes, panels.items(), strict=False):
        for run, recs in runs.items():
            for key in keys:
                pts = [(r["iteration"], r[key]) for r in recs
                       if isinstance(r.get(key), int | float)]
                if not pts:
                    continue
                xs, ys = zip(*pts, strict=True)
                label = key.rsplit("/", 1)[-1] if title == "PQ" else None
                if several:
                    label = f"{run}: {label}" if label else run
                ax.plot(xs, ys, marker="o" if title == "PQ" else None, markersize=3,
                        linewidth=1, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if title.startswith("loss") or title == "total_loss":
            values = [r[k] for recs in runs.values() for r in recs for k in keys
                      if isinstance(r.get(k), int | float)]
            if values and min(values) > 0 and max(values) / min(values) > 50:
                ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _run_names(paths: Sequence[str]) -> list[str]:
    """Each run's folder name, or its whole path where two names collide."""
    dirs = [os.path.normpath(os.path.dirname(p) if p.endswith(".json") else p) for p in paths]
    names = [os.path.basename(d) or d for d in dirs]
    return [d if names.count(n) > 1 else n for n, d in zip(names, dirs, strict=True)]


def plot_curves(run_dirs: Sequence[str], output: str) -> Any:
    """Read each run's ``metrics.json``, draw them on one figure and write it to ``output``
    (PNG, atomically); returns the Figure. ``output`` is checked before any reading."""
    check_output_file(output)
    refuse_replacing_inputs([output], [os.path.join(d, "metrics.json") if os.path.isdir(d)
                                       else d for d in run_dirs])
    runs = {name: load_metrics(d) for name, d in zip(_run_names(run_dirs), run_dirs,
                                                     strict=True)}
    fig = draw_curves(runs)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(output, buf.getvalue())
    return fig


def write_training_curves(output_dir: str) -> str | None:
    """``OUTPUT_DIR/curves.png`` at the end of training (main process). A failure is a
    warning: a plot must never fail the training that produced it."""
    from detectron2.utils import comm

    if not comm.is_main_process():
        return None
    path = os.path.join(output_dir, "curves.png")
    try:
        plot_curves([output_dir], path)
    except Exception as e:  # noqa: BLE001 - anything: the training itself succeeded
        logger.warning(f"Could not plot the training curves to {path}: {e!r}")
        return None
    logger.info(f"Wrote the training curves to {path}")
    return path
