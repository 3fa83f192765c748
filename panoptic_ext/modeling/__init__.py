from .combine import (
    COMBINE_REGISTRY,
    HeuristicCombine,
    build_combine,
    combine_panoptic,
    combine_panoptic_crops,
)
from .meta_arch import PanopticFPNExt
from .postprocess import CombineInputs, paste_for_combine, semantic_argmax, semantic_logits
from .semantic_head import SemanticFPNHead, semantic_loss

__all__ = [
    "COMBINE_REGISTRY",
    "HeuristicCombine",
    "CombineInputs",
    "build_combine",
    "combine_panoptic",
    "combine_panoptic_crops",
    "PanopticFPNExt",
    "paste_for_combine",
    "SemanticFPNHead",
    "semantic_argmax",
    "semantic_logits",
    "semantic_loss",
]
