#!/usr/bin/env python
"""Time PanopticFPNExt against Detectron2's PanopticFPN on the same images, side by side.

    python tools/benchmark.py --num-images 3 --size 800x1333 \
        --config-file configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml MODEL.DEVICE cpu
    python tools/benchmark.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        MODEL.WEIGHTS /tmp/run400/model_final.pth TEST.PRECISION bf16 --outputs panoptic_seg
    python tools/benchmark.py --input 'photos/*.jpg' --num-images 4 \
        --config-file configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml MODEL.DEVICE cpu

Without --input the images are generated at --size (default 800x1333) and the outputs stay at
that size. With --input (files, folders, quoted glob patterns) each file is read and resized as
Detectron2's DefaultPredictor does (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST; --size is refused)
and both models return outputs at its original size; the files cycle up to --num-images
(default: each file once), so a multiple of their count weighs them alike. With MODEL.WEIGHTS
empty the random weights are always tamed (`tame_random_weights`, lower score thresholds) so
that ~100 detections reach mask pasting and the merge.

Prints which inputs were timed (names, sizes, warm-up), per-stage and end-to-end latency of
both, their ratio, per image the detections and panoptic segments of each, the agreement of
our panoptic output with Detectron2's, our runtime (TEST.RUNTIME), and per stage "x of the
arithmetic limit": its time over its multiply-adds (fvcore) at a 3x3-conv peak measured in the
same run. The logic lives in ``benchmarks/model_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

# benchmarks/ is not installed: import it from the checkout this script sits in
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.model_speed import (
    InputError,
    format_combine_report,
    format_report,
    load_input_files,
    run_benchmark,
    run_combine_benchmark,
)
from panoptic_ext.cli import parse_args_and_overrides, size_arg
from panoptic_ext.engine.defaults import setup_cfg

CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+")


def split_overrides(values: list[str]) -> tuple[list[str], list[str]]:
    """(files, config overrides) of what `--input` swept up: argparse gives it every word up to
    the next flag, so `--input a.jpg MODEL.DEVICE cpu` must still end in overrides, as
    everywhere else. The overrides start at the first KEY.NAME that is not a file."""
    for i, value in enumerate(values):
        if CONFIG_KEY.fullmatch(value) and not os.path.exists(value):
            return values[:i], values[i:]
    return values, []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s --config-file FILE [options] "
        "[KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", metavar="FILE", default=None,
                        help="image files, folders or quoted glob patterns, resized as "
                             "DefaultPredictor does (outputs at the original size), instead "
                             "of generated images")
    parser.add_argument("--num-images", type=int, default=None,
                        help="timed images (>= 1; default 3, with --input each file once; "
                             "files cycle when it exceeds their count)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds of each model on every distinct input first")
    parser.add_argument("--size", type=size_arg, default=None,
                        help="HxW of the generated inputs (default 800x1333); not with --input")
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
    if args.input:
        args.input, swept = split_overrides(args.input)
        if len(swept) % 2:
            parser.error(f"config overrides come in KEY VALUE pairs, got {swept}")
        opts = [*opts, *swept]
        if not args.input:
            parser.error(f"--input: expected image files before the overrides {swept}")
    if args.num_images is not None and args.num_images < 1:
        parser.error("--num-images must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.input and args.size:
        parser.error("--size does not apply with --input: files are resized as DefaultPredictor "
                     "does; set INPUT.MIN_SIZE_TEST / INPUT.MAX_SIZE_TEST instead")
    if args.input and args.combine_only:
        parser.error("--input does not apply with --combine-only (its inputs are generated)")
    size = args.size or (800, 1333)

    cfg = setup_cfg(args.config_file, opts)
    if args.combine_only:
        if min(args.combine_only) < 0 or args.repeats < 1:
            parser.error("--combine-only counts must be >= 0 and --repeats >= 1")
        rows = run_combine_benchmark(args.combine_only, size=size,
                                     device=cfg.MODEL.DEVICE, repeats=args.repeats,
                                     seed=args.seed)
        print(json.dumps(rows, indent=2) if args.json else format_combine_report(rows))
        return 0
    inputs = None
    if args.input:
        try:  # before the models are built: a bad path fails at once
            inputs = load_input_files(cfg, args.input)
        except InputError as e:
            parser.error(str(e))
    num_images = args.num_images or (len(inputs) if inputs else 3)
    report = run_benchmark(cfg, num_images=num_images, size=size, warmup=args.warmup,
                           seed=args.seed, outputs=args.outputs,
                           arithmetic_limit=not args.no_limit, inputs=inputs)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
