#!/usr/bin/env python
"""Prepare Cityscapes for Panoptic FPN: panoptic JSON + PNGs, instance annotations, stuff maps.

From the download ($DETECTRON2_DATASETS/cityscapes/{leftImg8bit,gtFine}/<split>/<city>/...):
cityscapesScripts' panoptic conversion, then the instances JSON and stuff PNGs Panoptic FPN
trains on. Parallel; re-runs skip what is up to date; absent splits are reported. See
datasets/README.md (Cityscapes).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

try:
    from panoptic_ext.data.cityscapes import CITYSCAPES_SPLITS, prepare_cityscapes_panoptic
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from panoptic_ext.data.cityscapes import CITYSCAPES_SPLITS, prepare_cityscapes_panoptic
from panoptic_ext.cli import add_dataset_script_arguments  # noqa: E402 (importable by now)
from panoptic_ext.formats import PanopticFormatError  # noqa: E402 (importable by now)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_script_arguments(parser, "cityscapes/", "convert every file again")
    parser.add_argument("--splits", nargs="+", default=list(CITYSCAPES_SPLITS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code: 0 done, 1 no split found, 2 an error (printed)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = prepare_cityscapes_panoptic(args.root, args.splits, workers=args.workers,
                                             force=args.force)
    except (ImportError, FileNotFoundError, PanopticFormatError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, r in report.items():
        if "missing" in r:
            print(f"{split}: not found ({' and '.join(r['missing'])} do not exist); skipped")
        else:
            derived = "rebuilt" if r["derived"] else "up to date"
            print(f"{split}: {r['converted'] + r['up_to_date']} images ({r['converted']} "
                  f"converted, {r['up_to_date']} up to date); instances and stuff PNGs {derived}")
    if all("missing" in r for r in report.values()):
        print(f"error: no Cityscapes split found under {os.path.join(args.root, 'cityscapes')}; "
              "see datasets/README.md for the expected layout", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
