#!/usr/bin/env python
"""Plot training curves from metrics.json: every loss, the total loss, the learning rate, time
and data_time per iteration, and PQ at each evaluation; several runs on one figure.

    python tools/plot_curves.py output/demo --output curves.png
    python tools/plot_curves.py output/run_a output/run_b --output compare.png

tools/train_net.py writes OUTPUT_DIR/curves.png itself when training ends. The logic lives in
``panoptic_ext.apps.curves``.
"""

import argparse
import sys

from panoptic_ext.apps.curves import plot_curves


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="OUTPUT_DIR",
                        help="training output folders (or their metrics.json files)")
    parser.add_argument("--output", required=True, metavar="FILE.png")
    args = parser.parse_args(argv)
    try:
        plot_curves(args.runs, args.output)
    except (OSError, ValueError) as e:  # named: a run's metrics.json, or --output
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
