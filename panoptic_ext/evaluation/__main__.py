"""Print PQ (summary + per category) for COCO panoptic predictions made elsewhere.

    python -m panoptic_ext.evaluation GT_JSON PRED_JSON [GT_DIR PRED_DIR] [--workers N]
        [--backend auto|hotcoco|panoptic_ext]

Folders default to the json paths without ``.json``, as in panopticapi.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .pq import (
    PQ_BACKENDS,
    PanopticFormatError,
    evaluate_files,
    format_class_table,
    format_summary_table,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m panoptic_ext.evaluation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("gt_json")
    parser.add_argument("pred_json")
    parser.add_argument("gt_dir", nargs="?", default=None)
    parser.add_argument("pred_dir", nargs="?", default=None)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: all CPUs)")
    parser.add_argument("--backend", default="auto", choices=PQ_BACKENDS,
                        help="auto: hotcoco where it gives panopticapi's numbers, else ours")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="also write the panopticapi-style results to this file")
    args = parser.parse_args(argv)
    if (args.gt_dir is None) != (args.pred_dir is None):
        parser.error("give both GT_DIR and PRED_DIR, or neither")

    start = time.perf_counter()
    try:
        results, stats, categories = evaluate_files(
            args.gt_json, args.pred_json, args.gt_dir, args.pred_dir, workers=args.workers,
            backend=args.backend,
        )
    except (PanopticFormatError, OSError) as e:  # named files: missing, a folder, unreadable
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"PQ computed in {time.perf_counter() - start:.2f} s")
    print(format_summary_table(results))
    print()
    print(format_class_table(results, categories, stats))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({k: v if k != "per_class" else {str(c): r for c, r in v.items()}
                       for k, v in results.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
