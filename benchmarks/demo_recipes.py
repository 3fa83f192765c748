"""The demo recipes tried: PQ on the synthetic validation split against training time.

Every recipe trains ``configs/Synthetic/panoptic_fpn_R_50.yaml`` (Panoptic FPN R-50 + FPN from
scratch) with its overrides and the evaluation every ``--eval-period`` iterations, in its own
OUTPUT_DIR under ``--root`` (resumed, or skipped when finished, when the command is repeated).
``plot`` draws PQ against training time: iterations times the run's median step time, or the
step time given by ``--step-time NAME=SECONDS`` (e.g. from tools/benchmark_train.py on an idle
machine, when the runs shared the machine).

    python benchmarks/demo_recipes.py run --root /tmp/recipes
    python benchmarks/demo_recipes.py plot --root /tmp/recipes --output recipes.png
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "Synthetic", "panoptic_fpn_R_50.yaml")

_COSINE = ["SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR", "SOLVER.STEPS", "()"]
RECIPES: dict[str, list[str]] = {
    # the recipe before: 240 iterations, 64 ROIs per image, one LR step
    "b8_240it_roi64_step": ["SOLVER.MAX_ITER", "240", "SOLVER.WARMUP_ITERS", "50",
                            "SOLVER.STEPS", "(190,)", "SOLVER.BASE_LR", "0.02",
                            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64"],
    # the recipe after: the same with 32 ROIs per image (up to 8 positives for the mask head)
    "b8_240it_roi32_step": ["SOLVER.MAX_ITER", "240", "SOLVER.WARMUP_ITERS", "50",
                            "SOLVER.STEPS", "(190,)", "SOLVER.BASE_LR", "0.02",
                            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"],
    # the recipe since: 90% of it (216 iterations, the step at the same fraction), for the
    # 12-minute demo on an AVX2-only CPU
    "b8_216it_roi32_step": ["SOLVER.MAX_ITER", "216", "SOLVER.WARMUP_ITERS", "45",
                            "SOLVER.STEPS", "(171,)", "SOLVER.BASE_LR", "0.02",
                            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"],
    "b8_120it_roi32_cos": ["SOLVER.MAX_ITER", "120", "SOLVER.WARMUP_ITERS", "20",
                           "SOLVER.BASE_LR", "0.03", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
                           "32", *_COSINE],
    "b8_160it_roi32_cos": ["SOLVER.MAX_ITER", "160", "SOLVER.WARMUP_ITERS", "25",
                           "SOLVER.BASE_LR", "0.03", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
                           "32", *_COSINE],
    "b4_240it_roi32_cos": ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "240",
                           "SOLVER.WARMUP_ITERS", "30", "SOLVER.BASE_LR", "0.02",
                           "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", *_COSINE],
}


def train(root: str, name: str, eval_period: int, opts: Sequence[str]) -> None:
    """One recipe's run, resumed if interrupted; a finished run (model_final.pth) is kept."""
    out = os.path.join(root, name)
    if os.path.isfile(os.path.join(out, "model_final.pth")):
        return
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
           CONFIG, "--resume", "OUTPUT_DIR", out, "TEST.EVAL_PERIOD", str(eval_period),
           "SOLVER.CHECKPOINT_PERIOD", "1000", *RECIPES[name], *opts]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def pq_curve(run_dir: str, step_time: float | None = None
             ) -> tuple[list[float], list[float], float]:
    """(training seconds, PQ) at each evaluation of a run, and the step time: seconds are
    iterations times `step_time` (default: the run's median logged step time)."""
    from panoptic_ext.apps.curves import load_metrics

    records = load_metrics(run_dir)
    if step_time is None:
        step_time = statistics.median(r["time"] for r in records if "time" in r)
    points = [(r["iteration"] + 1, v) for r in records for k, v in r.items()
              if k.endswith("panoptic_seg/PQ")]
    return [it * step_time for it, _ in points], [pq for _, pq in points], step_time


def plot(root: str, output: str, step_times: Mapping[str, float]) -> str:
    """PQ against training time for every recipe run found under `root`; returns a table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = [f"{'recipe':<24}{'step s':>8}{'train s':>9}{'PQ':>7}"]
    for name in RECIPES:
        run = os.path.join(root, name)
        if not os.path.isfile(os.path.join(run, "metrics.json")):
            continue
        secs, pq, step = pq_curve(run, step_times.get(name))
        if not pq:
            continue
        ax.plot([s / 60 for s in secs], pq, marker="o", label=name)
        rows.append(f"{name:<24}{step:>8.2f}{secs[-1]:>9.0f}{pq[-1]:>7.2f}")
    ax.axhline(78, color="gray", linestyle="--", linewidth=1)
    ax.set_xlabel("training time (min): iterations x step time")
    ax.set_ylabel("PQ, synthetic val")
    ax.set_title("Demo recipes: PQ during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    return "\n".join(rows)


def _step_time(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    if name not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown recipe {name!r}; one of {sorted(RECIPES)}")
    return name, float(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "plot"])
    parser.add_argument("--root", required=True, help="folder for the recipes' OUTPUT_DIRs")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--eval-period", type=int, default=40)
    parser.add_argument("--output", default="demo_recipes.png", help="plot: the PNG to write")
    parser.add_argument("--step-time", type=_step_time, action="append", default=[],
                        metavar="NAME=SECONDS", help="plot: a recipe's step time")
    args, opts = parser.parse_known_args(argv)  # the rest: KEY VALUE overrides for every run
    if args.command == "run":
        for name in args.recipes:
            train(args.root, name, args.eval_period, opts)
        return 0
    print(plot(args.root, args.output, dict(args.step_time)))
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
