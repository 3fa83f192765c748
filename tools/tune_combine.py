#!/usr/bin/env python
"""Tune the panoptic merge thresholds of a trained model for the best PQ on a dataset.

    python tools/tune_combine.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        MODEL.WEIGHTS output/demo/model_final.pth
    python tools/train_net.py --config-file ... --eval-only ...  # then merge the result:
    cfg.merge_from_file("output/demo/combine_tuned.yaml")

Runs the model once over the dataset (default DATASETS.TEST[0]), merges every setting of a grid
(OVERLAP_THRESH x STUFF_AREA_LIMIT x INSTANCES_CONFIDENCE_THRESH, always including the
config's values), prints them sorted by PQ and writes the best as a config fragment
(default OUTPUT_DIR/combine_tuned.yaml). The logic lives in ``panoptic_ext.apps.tune``.
"""

import argparse
import os
import sys

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.tune import format_results, tune_combine, write_tuned_yaml
from panoptic_ext.cli import parse_args_and_overrides
from panoptic_ext.engine import setup_cfg


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --config-file FILE [--dataset NAME] [options] [KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", help="registered dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--output", metavar="YAML",
                        help="where to write the best setting (default OUTPUT_DIR/"
                             "combine_tuned.yaml)")
    parser.add_argument("--overlap-thresh", type=_floats, metavar="T,T,..",
                        help="OVERLAP_THRESH values (default 0.3,0.4,0.5,0.6,0.7)")
    parser.add_argument("--stuff-area", type=_floats, metavar="A,A,..",
                        help="STUFF_AREA_LIMIT values (default 0, 1/4, 1/2, 1, 2, 4 x the "
                             "config's)")
    parser.add_argument("--score-thresh", type=_floats, metavar="T,T,..",
                        help="INSTANCES_CONFIDENCE_THRESH values (default 0.2,0.3,..,0.7)")
    parser.add_argument("--max-images", type=int, help="use only the first N images")
    parser.add_argument("--top", type=int, help="print only the N best settings")
    args, opts = parse_args_and_overrides(parser, argv)
    if args.max_images is not None and args.max_images < 1:
        parser.error("--max-images must be >= 1")

    setup_logger(name="panoptic_ext")
    cfg = setup_cfg(args.config_file, opts, eval_only=True)
    result = tune_combine(cfg, args.dataset, overlaps=args.overlap_thresh,
                          stuff_areas=args.stuff_area, scores=args.score_thresh,
                          max_images=args.max_images)
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "combine_tuned.yaml")
    write_tuned_yaml(output, result)
    best, default = result.best, result.default
    print(f"Settings tried on {result.dataset} ({result.num_images} images), best PQ first:")
    print(format_results(result, top=args.top))
    print(f"default: PQ {default.pq:.3f}  ({default.setting})")
    print(f"best:    PQ {best.pq:.3f}  ({best.setting})")
    print(f"gain:    {result.gain:+.3f} PQ")
    if result.edges():
        print(f"note: the best {', '.join(result.edges())} is at the end of the values searched; "
              "a wider range may do better")
    print(f"Wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
