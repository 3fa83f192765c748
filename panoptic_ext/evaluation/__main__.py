"""Print PQ (summary + per category) for COCO panoptic predictions made elsewhere.

    python -m panoptic_ext.evaluation GT_JSON PRED_JSON [GT_DIR PRED_DIR] [--workers N]
        [--backend auto|hotcoco|panoptic_ext]

Folders default to the json paths without their ``.json`` suffix, as in panopticapi. A
``file_name`` leading out of its folder is refused unless ``--allow-outside-paths``; an image
or segment id listed twice is an error.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..utils.io import atomic_write_json
from ..utils.paths import check_output_file, refuse_replacing_inputs
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
    parser.add_argument("--allow-outside-paths", action="store_true",
                        help="read PNGs whose file_name leads out of their folder (absolute, ..)")
    args = parser.parse_args(argv)
    if (args.gt_dir is None) != (args.pred_dir is None):
        parser.error("give both GT_DIR and PRED_DIR, or neither")

    start = time.perf_counter()
    try:
        if args.json_out:  # before the work: a bad --json fails at once
            check_output_file(args.json_out, "--json")
            refuse_replacing_inputs([args.json_out], [args.gt_json, args.pred_json], "--json")
        results, stats, categories = evaluate_files(
            args.gt_json, args.pred_json, args.gt_dir, args.pred_dir, workers=args.workers,
            backend=args.backend, allow_outside=args.allow_outside_paths,
        )
    except (PanopticFormatError, OSError, ValueError) as e:  # named files and entries
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"PQ computed in {time.perf_counter() - start:.2f} s")
    print(format_summary_table(results))
    print()
    print(format_class_table(results, categories, stats))
    if args.json_out:
        try:
            atomic_write_json(args.json_out, {
                k: v if k != "per_class" else {str(c): r for c, r in v.items()}
                for k, v in results.items()}, indent=2)
        except OSError as e:  # names the file
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
