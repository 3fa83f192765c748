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

import numpy as np
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

from panoptic_ext import add_panoptic_config
from panoptic_ext.demo import PanopticDemo, VideoSourceError, collect_inputs


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
    cfg = get_cfg()
    add_panoptic_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.confidence_threshold is not None:
        t = args.confidence_threshold
        if not 0.0 <= t <= 1.0:
            raise SystemExit(f"--confidence-threshold must be in [0, 1], got {t}")
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = t
        cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = t
    cfg.freeze()
    return cfg


def show(demo: PanopticDemo, files) -> int:
    import cv2

    failed = 0
    for path in files:
        try:
            image = read_image(path, format="BGR")
        except Exception as e:
            print(f"ERROR: cannot read image {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        picture = demo.draw(image, demo.predict(image))
        try:
            cv2.imshow("panoptic_ext", np.ascontiguousarray(picture[:, :, ::-1]))
        except cv2.error as e:
            msg = f"Cannot open a window ({e}); pass --output DIR to save results"
            raise SystemExit(msg) from e
        if cv2.waitKey(0) == 27:  # Esc quits
            break
    return failed


def run_video(args) -> int:
    demo = PanopticDemo(setup_cfg(args))
    try:
        demo.run_video(0 if args.webcam else args.video_input, args.output)
    except VideoSourceError as e:
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
    demo = PanopticDemo(setup_cfg(args))
    if args.output:
        failed = len(demo.run_files(files, args.output))
    else:
        failed = show(demo, files)
    if failed or problems:
        print(f"{failed + len(problems)} input(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
