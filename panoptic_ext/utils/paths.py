"""Where the package keeps files it derives (caches), outside read-only dataset folders."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_cache_dir"]


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/panoptic_ext/<parts>`` (default ``~/.cache/...``), not created."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "panoptic_ext", *parts)
