from .combine import COMBINE_REGISTRY, HeuristicCombine, build_combine, combine_panoptic
from .meta_arch import PanopticFPNExt
from .semantic_head import SemanticFPNHead, semantic_loss

__all__ = [
    "COMBINE_REGISTRY",
    "HeuristicCombine",
    "build_combine",
    "combine_panoptic",
    "PanopticFPNExt",
    "SemanticFPNHead",
    "semantic_loss",
]
