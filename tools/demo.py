#!/usr/bin/env python
"""Panoptic FPN demo on images (pictures, COCO panoptic PNGs and predictions.json), a video
(an annotated video) or a webcam (a window).

    python tools/demo.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        --input a.jpg dir/ 'pat*.png' --output out/ --opts MODEL.WEIGHTS output/demo/model_final.pth
    python tools/demo.py --config-file ... --video-input in.mp4 --output out.mp4 --opts ...
    python tools/demo.py --config-file ... --webcam --opts ...
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.demo import PanopticDemo, VideoSourceError, collect_inputs
from panoptic_ext.engine import setup_cfg as engine_setup_cfg
from panoptic_ext.engine.weights import WeightsError
from panoptic_ext.utils.locks import RunLockedError


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+",
                   help="image files, folders, or quoted glob patterns")
    p.add_argument("--video-input", metavar="FILE", help="a video file")
    p.add_argument("--webcam", action="store_true", help="camera 0, shown in a window")
    p.add_argument("--output", help="folder for image results, or the annotated video (mp4); "
                                    "without it, show each result in a window")
    p.add_argument("--confidence-threshold", type=float, default=None,
                   help="minimum instance score (detection and panoptic merge)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return p


def setup_cfg(args):
    """The package's one setup; --confidence-threshold sets both score thresholds."""
    opts = list(args.opts)
    if args.confidence_threshold is not None:
        t = args.confidence_threshold
        if not 0.0 <= t <= 1.0:
            raise SystemExit(f"--confidence-threshold must be in [0, 1], got {t}")
        opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(t),
                 "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", str(t)]
    return engine_setup_cfg(args.config_file, opts, eval_only=True)


def _demo(args) -> PanopticDemo | None:
    """The demo, or None after naming weights that cannot be used (empty, unreadable, or not
    fitting the model) on stderr."""
    try:
        return PanopticDemo(setup_cfg(args))
    except WeightsError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return None


def run_video(args) -> int:
    demo = _demo(args)
    if demo is None:
        return 1
    try:
        demo.run_video(0 if args.webcam else args.video_input, args.output)
    except (VideoSourceError, OSError) as e:  # the source, or the output (named)
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if sum([bool(args.input), bool(args.video_input), args.webcam]) != 1:
        parser.error("give exactly one input: --input, --video-input or --webcam")
    if args.webcam and args.output:
        parser.error("--output is not supported with --webcam (it shows a window)")
    setup_logger(name="panoptic_ext")
    setup_logger(name="detectron2")
    if not args.input:
        return run_video(args)
    files, problems = collect_inputs(args.input)
    for p in problems:
        print(f"ERROR: {p}", file=sys.stderr)
    if not files:
        print("ERROR: no input image to process", file=sys.stderr)
        return 1
    demo = _demo(args)
    if demo is None:
        return 1
    if args.output:
        try:
            failed = len(demo.run_files(files, args.output))
        except (OSError, ValueError, RunLockedError) as e:  # the output folder, named
            print(f"ERROR: {e}", file=sys.stderr)
            return 1
    else:
        try:
            failed = demo.show_files(files)
        except VideoSourceError as e:
            print(f"ERROR: {e}", file=sys.stderr)
            return 1
    if failed or problems:
        print(f"{failed + len(problems)} input(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
