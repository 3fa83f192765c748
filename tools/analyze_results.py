#!/usr/bin/env python
"""Where does the model go wrong? Per-image PQ, the worst images drawn with an error map,
PQ/SQ/RQ per category, and one HTML page with all of it.

    python tools/analyze_results.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        --output analysis/ MODEL.WEIGHTS output/demo/model_final.pth
    python tools/analyze_results.py --config-file C --output analysis/ \
        --predictions output/demo/inference/synthetic_panoptic_val_separated   # saved ones

Runs the model over the dataset (default DATASETS.TEST[0]), or reads the predictions an
evaluation with TEST.SAVE_PREDICTIONS True wrote, and writes DIR/per_image.csv (worst first),
DIR/worst/ (image | ground truth | prediction | error map), DIR/per_class.png and
DIR/index.html. The logic lives in ``panoptic_ext.apps.analyze``.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.analyze import analyze_results
from panoptic_ext.cli import parse_args_and_overrides
from panoptic_ext.engine import setup_cfg
from panoptic_ext.utils.locks import RunLockedError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --config-file FILE --output DIR [--dataset NAME] [--worst K] "
              "[--predictions DIR] [KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--dataset", metavar="NAME",
                        help="registered dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--worst", type=int, default=10, metavar="K",
                        help="pictures of the K worst images (default 10)")
    parser.add_argument("--predictions", metavar="DIR",
                        help="folder with predictions.json + predictions/ (TEST.SAVE_PREDICTIONS)"
                             " instead of running the model")
    args, opts = parse_args_and_overrides(parser, argv)
    if args.worst < 0:
        parser.error("--worst must be >= 0")
    setup_logger(name="panoptic_ext")
    cfg = setup_cfg(args.config_file, opts, eval_only=True)
    try:
        result = analyze_results(cfg, args.output, args.dataset, worst=args.worst,
                                 predictions=args.predictions)
    except (OSError, ValueError, RunLockedError) as e:  # named: output, predictions, a lock
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    s = result.summary["All"]
    print(f"{result.dataset}: {len(result.images)} images, PQ {100 * s['pq']:.2f} "
          f"SQ {100 * s['sq']:.2f} RQ {100 * s['rq']:.2f}")
    for r in result.images[:5]:
        print(f"  worst: {r.name}  PQ {r.pq:.1f}  TP {r.tp} FP {r.fp} FN {r.fn}")
    print(f"Wrote {result.files['index_html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
