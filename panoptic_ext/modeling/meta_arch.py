"""PanopticFPNExt: Mask R-CNN + semantic FPN head + a pluggable panoptic merge.

Submodule names follow Detectron2's `PanopticFPN`, so its checkpoints (including the model zoo's
`panoptic_fpn_R_50_*`) load with no missing or unexpected keys.
"""

import logging
from collections.abc import Callable

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_sem_seg_head
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from .combine import build_combine

__all__ = ["PanopticFPNExt"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PanopticFPNExt(GeneralizedRCNN):
    """Panoptic FPN (Kirillov et al., 2019) as a Detectron2 meta-architecture."""

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        combine: Callable,
        instance_loss_weight: float = 1.0,
        loss_weights: dict[str, float] | None = None,
        **kwargs,
    ):
        """
        Args:
            sem_seg_head: semantic branch; must expose `ignore_value` and `layers(features)`.
            combine: the panoptic merge, called as `combine(instances, sem_labels)`.
            instance_loss_weight: multiplies every ROI-head loss (box and mask branches).
            loss_weights: extra per-loss multipliers by loss name.
            kwargs: as for GeneralizedRCNN (backbone, proposal_generator, roi_heads, ...).
        """
        super().__init__(**kwargs)
        self.sem_seg_head = sem_seg_head
        self.combine = combine
        self.instance_loss_weight = float(instance_loss_weight)
        self.loss_weights = {k: float(v) for k, v in (loss_weights or {}).items()}

    @classmethod
    def from_config(cls, cfg) -> dict:
        ret = super().from_config(cfg)
        ret["sem_seg_head"] = build_sem_seg_head(cfg, ret["backbone"].output_shape())
        ret["combine"] = build_combine(cfg)
        ret["instance_loss_weight"] = cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        ret["loss_weights"] = dict(cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS)
        return ret

    def forward(self, batched_inputs: list[dict[str, torch.Tensor]]):
        """Training: dict of weighted losses. Inference: see `inference`."""
        if not self.training:
            return self.inference(batched_inputs)
        if "sem_seg" not in batched_inputs[0] or "instances" not in batched_inputs[0]:
            raise ValueError(
                "PanopticFPNExt trains on 'separated' panoptic data: each input needs 'instances' "
                "and 'sem_seg' (register the dataset with register_coco_panoptic_separated and "
                "use its '<name>_separated' form in DATASETS.TRAIN)"
            )
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)

        gt_sem_seg = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.backbone.size_divisibility,
            self.sem_seg_head.ignore_value,
            self.backbone.padding_constraints,
        ).tensor
        _, losses = self.sem_seg_head(features, gt_sem_seg)

        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.instance_loss_weight != 1.0:
            detector_losses = {k: v * self.instance_loss_weight for k, v in detector_losses.items()}
        losses.update(proposal_losses)
        losses.update(detector_losses)
        for name, w in self.loss_weights.items():
            if w != 1.0 and name in losses:
                losses[name] = losses[name] * w
        return losses

    def inference(self, batched_inputs: list[dict[str, torch.Tensor]], do_postprocess: bool = True):
        """Per image: {"instances", "sem_seg" (C x H x W logits), "panoptic_seg"} at the
        requested "height"/"width" (default: the input size).

        With do_postprocess=False, returns the raw (detector results, semantic logits) at the
        network's input scale, as Detectron2's PanopticFPN does.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_logits, _ = self.sem_seg_head(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        detections, _ = self.roi_heads(images, features, proposals, None)
        if not do_postprocess:
            return detections, sem_logits

        results = []
        for sem, det, inp, image_size in zip(
            sem_logits, detections, batched_inputs, images.image_sizes, strict=False
        ):
            height = inp.get("height", image_size[0])
            width = inp.get("width", image_size[1])
            sem_r = sem_seg_postprocess(sem, image_size, height, width)
            det_r = detector_postprocess(det, height, width)
            panoptic = self.combine(det_r, sem_r.argmax(dim=0))
            results.append({"sem_seg": sem_r, "instances": det_r, "panoptic_seg": panoptic})
        return results
