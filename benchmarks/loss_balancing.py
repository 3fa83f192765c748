"""Fixed against learned task balancing at the demo budget: PQ, PQ_th, PQ_st side by side.

Each setting trains ``configs/Synthetic/panoptic_fpn_R_50.yaml`` from scratch as ``make demo``
does (same iterations and precision: bf16 where the CPU has it natively, else fp32; ``SEED``
per run), then evaluates on the synthetic validation set; settings differ only in how the
losses are weighted:

- ``sum``: semantic weight 1.0 (``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT 1.0``), the plain sum;
- ``paper``: 0.5, the semantic weight of the Panoptic FPN paper's COCO grid and of
  Detectron2's COCO configs (what the synthetic config inherits, i.e. the current default);
- ``uncertainty``: learned per-task weights (semantic, instance), starting from ``paper``;
- ``uncertainty_term``: learned per-loss-term weights, starting from ``paper``.

Every run has its own OUTPUT_DIR under ``--root`` and is resumed (or skipped when evaluated)
when the command is repeated, so a long measurement can be stopped and continued.

    python benchmarks/loss_balancing.py --root /tmp/lb --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "Synthetic", "panoptic_fpn_R_50.yaml")
SETTINGS: dict[str, list[str]] = {
    "sum": ["MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "1.0"],
    "paper": ["MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "0.5"],
    "uncertainty": ["MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "0.5",
                    "MODEL.PANOPTIC_EXT.LOSS_BALANCING", "uncertainty"],
    "uncertainty_term": ["MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "0.5",
                         "MODEL.PANOPTIC_EXT.LOSS_BALANCING", "uncertainty",
                         "MODEL.PANOPTIC_EXT.LOSS_BALANCING_GROUPS", "term"],
}
METRICS = ("PQ", "PQ_th", "PQ_st")
_EVAL = os.path.join("inference", "synthetic_panoptic_val_separated", "metrics.json")

logger = logging.getLogger("benchmarks.loss_balancing")


def run_dir(root: str, setting: str, seed: int) -> str:
    return os.path.join(root, f"{setting}_seed{seed}")


def train_and_evaluate(root: str, setting: str, seed: int, opts: Sequence[str],
                       env: dict[str, str]) -> dict[str, float]:
    """One run (resumed if interrupted, skipped if evaluated); its panoptic metrics."""
    out = run_dir(root, setting, seed)
    metrics_path = os.path.join(out, _EVAL)
    if not os.path.isfile(metrics_path):
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file",
               CONFIG, "--resume", "SEED", str(seed), *SETTINGS[setting], *opts, "OUTPUT_DIR", out]
        logger.info(f"[{setting} seed {seed}] training into {out} (log: {out}/run.log)")
        start = time.time()
        with open(os.path.join(out, "run.log"), "a") as log:
            proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{setting} seed {seed} failed ({proc.returncode}); see "
                               f"{out}/run.log")
        logger.info(f"[{setting} seed {seed}] done in {(time.time() - start) / 60:.1f} min")
    with open(metrics_path) as f:
        panoptic = json.load(f)["panoptic_seg"]
    return {k: float(panoptic[k]) for k in METRICS}


def learned_weights(out: str) -> dict[str, float]:
    """The last logged effective weights of a run (empty for fixed weights)."""
    path = os.path.join(out, "metrics.json")
    last: dict[str, float] = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                last.update({k.split("/", 1)[1]: v for k, v in row.items()
                             if k.startswith("loss_weight/")})
    return last


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown table: mean (and spread over seeds) per metric and setting."""
    lines = ["| setting | seeds | " + " | ".join(METRICS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for setting, runs in results.items():
        cells = []
        for k in METRICS:
            values = [r[k] for r in runs]
            spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.1f}{spread}")
        lines.append(f"| {setting} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True,
                        help="folder for the runs' OUTPUT_DIRs (one per setting and seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--data", default=None,
                        help="dataset root (DETECTRON2_DATASETS; default: the environment's, "
                        "else datasets/); the synthetic set is generated there if missing")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="extra KEY VALUE config overrides for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    env = dict(os.environ)
    if args.data:
        env["DETECTRON2_DATASETS"] = args.data
    subprocess.run([sys.executable, os.path.join(REPO, "datasets", "prepare_synthetic.py")],
                   cwd=REPO, env=env, check=True)
    results: dict[str, list[dict[str, float]]] = {}
    # Seed-major: every setting gets its first seed before any gets a second.
    failed = []
    for seed in args.seeds:
        for setting in args.settings:
            try:
                metrics = train_and_evaluate(args.root, setting, seed, args.opts, env)
            except RuntimeError as exc:  # the other runs still count; rerun to retry it
                logger.error(str(exc))
                failed.append(f"{setting} seed {seed}")
                continue
            results.setdefault(setting, []).append(metrics)
            print(table(results), flush=True)
    print()
    print(table(results))
    for setting in args.settings:
        if "uncertainty" in setting:
            for seed in args.seeds:
                w = learned_weights(run_dir(args.root, setting, seed))
                shown = ", ".join(f"{k} {v:.3g}" for k, v in sorted(w.items()))
                print(f"{setting} seed {seed}, final effective weights: {shown}")
    if failed:
        print(f"Failed (rerun the same command to retry): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
