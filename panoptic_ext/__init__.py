"""Panoptic FPN for Detectron2.

Importing this package registers the meta-architecture, the semantic head, the merge strategies
and the synthetic datasets in Detectron2's registries; nothing else needs to be called.
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without Detectron2
    raise ImportError(
        "panoptic_ext needs Detectron2, which has no canonical wheel. Run `make install` in the "
        "panoptic_ext repository (installs the pinned sal-detectron2==0.7.2 wheel into .venv), or "
        "build Detectron2 from source: https://detectron2.readthedocs.io/en/latest/tutorials/"
        "install.html"
    ) from e

from . import data  # noqa: F401  (registers datasets)
from .config import add_panoptic_config
from .modeling import (
    COMBINE_REGISTRY,
    PanopticFPNExt,
    SemanticFPNHead,
    build_combine,
    combine_panoptic,
)

__all__ = [
    "add_panoptic_config",
    "PanopticFPNExt",
    "SemanticFPNHead",
    "COMBINE_REGISTRY",
    "build_combine",
    "combine_panoptic",
]
