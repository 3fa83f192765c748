#!/usr/bin/env python
"""Generate the synthetic panoptic dataset (COCO formats) under <root>/synthetic_panoptic.

A rerun with the same parameters exits at once; different parameters are refused unless
--force, so an existing dataset is never overwritten by accident. See datasets/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

try:
    from panoptic_ext.data.synthetic import SyntheticDatasetMismatch, generate_synthetic_dataset
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from panoptic_ext.data.synthetic import SyntheticDatasetMismatch, generate_synthetic_dataset
from panoptic_ext.cli import add_dataset_script_arguments  # noqa: E402 (importable by now)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; defaults match what the synthetic configs expect."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_script_arguments(parser, "", "replace an existing, different set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=300)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (>= 64)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path, written = generate_synthetic_dataset(
            args.root,
            seed=args.seed,
            num_train=args.num_train,
            num_val=args.num_val,
            size=args.size,
            force=args.force,
            workers=args.workers,
        )
    except (SyntheticDatasetMismatch, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if written:
        print(f"Synthetic panoptic dataset written to {path}")
    else:
        print(f"{path} is already up to date with these parameters; nothing written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
