#!/usr/bin/env python
"""Time PanopticFPNExt against Detectron2's PanopticFPN on the same images, side by side.

    python tools/benchmark.py --num-images 3 --size 800x1333 \
        --config-file configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml MODEL.DEVICE cpu
    python tools/benchmark.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        MODEL.WEIGHTS /tmp/run400/model_final.pth TEST.PRECISION bf16 --outputs panoptic_seg

Prints per-stage and end-to-end latency of both, their ratio, the agreement of our panoptic
output with Detectron2's, our runtime (TEST.RUNTIME), and per stage "x of the arithmetic
limit": its time over its multiply-adds (fvcore) at a 3x3-conv peak measured in the same run.
The logic lives in ``benchmarks/model_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# benchmarks/ is not installed: import it from the checkout this script sits in
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.model_speed import (
    format_combine_report,
    format_report,
    run_benchmark,
    run_combine_benchmark,
)
from panoptic_ext.cli import parse_args_and_overrides, size_arg
from panoptic_ext.engine.defaults import setup_cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s --config-file FILE [options] "
        "[KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--num-images", type=int, default=3, help="timed images (>= 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each model first")
    parser.add_argument("--size", type=size_arg, default=(800, 1333), help="HxW of the inputs")
    parser.add_argument("--outputs", nargs="+", default=None,
                        choices=["instances", "sem_seg", "panoptic_seg"],
                        help="what our model returns (default: MODEL.PANOPTIC_EXT."
                             "INFERENCE_OUTPUTS); Detectron2 always returns all three")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-limit", action="store_true",
                        help="skip the 3x3-conv peak and multiply-add count (the per-stage "
                             "'x of the arithmetic limit')")
    parser.add_argument("--combine-only", type=int, nargs="+", metavar="N", default=None,
                        help="time only the merge, Detectron2's against ours, at N instances "
                             "(e.g. 10 50 100) on MODEL.DEVICE; needs no weights")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per N with "
                        "--combine-only")
    args, opts = parse_args_and_overrides(parser, argv)
    if args.num_images < 1:
        parser.error("--num-images must be >= 1")

    cfg = setup_cfg(args.config_file, opts)
    if args.combine_only:
        if min(args.combine_only) < 0 or args.repeats < 1:
            parser.error("--combine-only counts must be >= 0 and --repeats >= 1")
        rows = run_combine_benchmark(args.combine_only, size=args.size,
                                     device=cfg.MODEL.DEVICE, repeats=args.repeats,
                                     seed=args.seed)
        print(json.dumps(rows, indent=2) if args.json else format_combine_report(rows))
        return 0
    report = run_benchmark(cfg, num_images=args.num_images, size=args.size, warmup=args.warmup,
                           seed=args.seed, outputs=args.outputs,
                           arithmetic_limit=not args.no_limit)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
