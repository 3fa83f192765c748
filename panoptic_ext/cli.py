"""Command-line helpers shared by the tools."""

import argparse
from collections.abc import Sequence

__all__ = ["parse_args_and_overrides"]


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
