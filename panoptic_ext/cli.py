"""Command-line helpers shared by the tools."""

import argparse
import os
from collections.abc import Sequence

__all__ = ["add_dataset_script_arguments", "parse_args_and_overrides", "size_arg"]


def parse_args_and_overrides(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> tuple[argparse.Namespace, list[str]]:
    """Known flags plus trailing Detectron2 `KEY VALUE` overrides; an unknown flag or an odd
    override list is a usage error rather than a confusing config failure later."""
    args, opts = parser.parse_known_args(argv)
    unknown = [o for o in opts if o.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if len(opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {opts}")
    return args, opts


def add_dataset_script_arguments(parser: argparse.ArgumentParser, holds: str, force_help: str
                                 ) -> None:
    """``--root`` (Detectron2's ``$DETECTRON2_DATASETS`` rule), ``--workers`` and ``--force``:
    the options every ``datasets/prepare_*.py`` script shares."""
    parser.add_argument(
        "--root", default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
        help=f"datasets root{f' holding {holds}' if holds else ''} (default: "
             "$DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help=force_help)


def size_arg(text: str) -> tuple[int, int]:
    """argparse type for an image size "HxW" (e.g. 800x1333), each side at least 32."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 800x1333, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text!r}")
    return h, w
