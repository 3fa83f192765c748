#!/usr/bin/env python
"""Time our training step against Detectron2's on the same weights and batches, side by side.

    python tools/benchmark_train.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml
    python tools/benchmark_train.py --config-file \
        configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml --size 800x1333 \
        SOLVER.IMS_PER_BATCH 2 MODEL.DEVICE cpu MODEL.WEIGHTS ""

Both sides start from the same random weights and take the same batches of the generated
synthetic training set (resized to --size when given; generated if missing), alternating which
goes first, after a warm-up. Prints per-stage medians (data, backbone+FPN, semantic head, RPN,
ROI heads, backward, optimizer), the first step's losses of both, the step's multiply-adds and
"x of the arithmetic limit" (a 3x3-conv peak measured in the same run), and `train ratio R`
(ours / Detectron2, median step) as its last line. The logic is in benchmarks/train_speed.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# benchmarks/ is not installed: import it from the checkout this script sits in
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_speed import format_train_report, run_train_benchmark
from panoptic_ext.cli import parse_args_and_overrides, size_arg
from panoptic_ext.data.builtin import default_datasets_root
from panoptic_ext.data.synthetic import generate_synthetic_dataset
from panoptic_ext.engine.defaults import setup_cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s --config-file FILE [options] "
        "[KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each (>= 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    parser.add_argument("--size", type=size_arg, default=None,
                        help="HxW of the training images (default: the generated images as "
                        "the config's augmentation sizes them)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-limit", action="store_true",
                        help="skip the 3x3-conv peak (the 'x of the arithmetic limit' rows)")
    args, opts = parse_args_and_overrides(parser, argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    generate_synthetic_dataset(default_datasets_root())  # kept as is when present
    opts = ["DATASETS.TRAIN", "('synthetic_panoptic_train_separated',)", *opts]
    cfg = setup_cfg(args.config_file, opts)
    report = run_train_benchmark(cfg, steps=args.steps, warmup=args.warmup, size=args.size,
                                 seed=args.seed, arithmetic_limit=not args.no_limit)
    print(json.dumps(report, indent=2) if args.json else format_train_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
