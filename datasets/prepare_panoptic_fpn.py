#!/usr/bin/env python
"""Create coco/panoptic_stuff_{split}/ semantic PNGs for Detectron2's Panoptic FPN datasets.

Things -> 0, stuff categories -> 1..K in category-id order, void -> 255, computed from the
panoptic JSON's categories. Splits that are absent are reported and skipped. See
datasets/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

try:
    from panoptic_ext.data.coco_prep import DEFAULT_SPLITS, prepare_coco_panoptic_fpn
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from panoptic_ext.data.coco_prep import DEFAULT_SPLITS, prepare_coco_panoptic_fpn
from panoptic_ext.cli import add_dataset_script_arguments  # noqa: E402 (importable by now)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_script_arguments(parser, "coco/", "rewrite up-to-date outputs too")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (1 when no split was found)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        results = prepare_coco_panoptic_fpn(
            args.root, args.splits, workers=args.workers, force=args.force
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not results:
        print(
            f"error: no COCO panoptic split found under {os.path.join(args.root, 'coco')}; "
            "see datasets/README.md for the expected layout",
            file=sys.stderr,
        )
        return 1
    for split, stats in results.items():
        print(
            f"{split}: {stats.total} semantic PNGs ({stats.written} new, "
            f"{stats.refreshed} refreshed, {stats.up_to_date} already up to date)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
