"""PanopticFPNExt: Mask R-CNN + semantic FPN head + a pluggable panoptic merge.

Submodule names follow Detectron2's `PanopticFPN`, so its checkpoints (including the model zoo's
`panoptic_fpn_R_50_*`) load with no missing or unexpected keys. This module holds training and
the inference dispatch; the post-processing steps are in `postprocess.py`, the merge in
`combine/`, the inference speed-ups (norm folding, channels_last, autocast) in
`inference_opts.py`. Compiled runtimes (TEST.RUNTIME) live in `panoptic_ext.deploy`, which hands
the model a `dense_runner`; the model does not know how that runner computes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_sem_seg_head
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import ImageList, Instances
from torch import nn

from .combine import build_combine
from .inference_opts import (
    FoldedNorms,
    Patch,
    convert_channels_last,
    float_outputs,
    frozen_norm_training_patches,
    masks_above,
    parallel_roi_align,
    shadowed,
)
from .loss_balancing import build_loss_balancer
from .mask_targets import with_indexed_masks
from .postprocess import (
    CombineInputs,
    class_argmax,
    intra_op_threads,
    paste_for_combine,
    semantic_argmax,
    semantic_resize,
)
from .precision import autocast, channels_last_training, check_precision, resolve_precision

__all__ = ["OUTPUTS", "DenseOutputs", "PanopticFPNExt"]

logger = logging.getLogger(__name__)

OUTPUTS = ("instances", "sem_seg", "panoptic_seg")  # what inference can return


class _NetworkOutputs(NamedTuple):
    """The network's outputs for a batch, before any post-processing."""

    image_sizes: list[tuple[int, int]]
    detections: list[Instances]
    sem_small: torch.Tensor | None  # head logits at 1/common_stride (fast semantic path)
    sem_full: torch.Tensor | None  # head logits at the padded input size


class DenseOutputs(NamedTuple):
    """What a dense runner (`PanopticFPNExt.dense_runner`) computes for a padded, normalized
    batch in place of torch: the semantic head's logits at 1/common_stride, the FPN features the
    ROI heads read, and patches (for `inference_opts.shadowed`) that make the RPN, box and mask
    heads return or compute the runner's outputs while proposals and detections are made."""

    sem_small: torch.Tensor
    features: dict[str, torch.Tensor]
    head_patches: list[Patch]


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
        loss_balancer: nn.Module | None = None,
        fast_inference: bool = True,
        channels_last: bool = True,
        fuse_norm: bool = True,
        postprocess_threads: int = 1,
        precision: str = "fp32",
        dense_runner: Callable[[nn.Module, torch.Tensor], DenseOutputs | None] | None = None,
        outputs: Sequence[str] = OUTPUTS,
        **kwargs,
    ):
        """Defaults are the config's (panoptic_ext/config.py).

        Args:
            sem_seg_head: semantic branch; must expose `ignore_value` and `layers(features)`.
            combine: the panoptic merge, called as `combine(instances, sem_labels)`.
            instance_loss_weight: multiplies every ROI-head loss (box and mask branches).
            loss_weights: extra per-loss multipliers by loss name.
            loss_balancer: learned task balancing applied after the fixed weights (see
                `loss_balancing.py`); None: the fixed weights only.
            fast_inference: post-process with less work for the same outputs (see `inference`).
            channels_last: run the convolutional parts in channels_last, in training and at
                inference (faster on CPU; low bits of the results differ from the default layout).
            fuse_norm: fold inference-mode batch norms into the preceding convolutions at
                inference, and frozen ones in the backbone in training (faster; low bits
                differ).
            postprocess_threads: torch CPU threads for the fast path's post-processing (0:
                unchanged); its many small ops lose more to thread hand-offs than they gain.
            precision: "fp32", "bf16" or "fp16" (CUDA) autocast for the convolutional parts at
                inference, as given (the config's TEST.PRECISION passes `resolve_precision`).
            dense_runner: called as `dense_runner(model, images)` at inference; its
                `DenseOutputs` replace the torch dense parts, None lets torch run them
                (`panoptic_ext.deploy.attach_runtime` sets TEST.RUNTIME's).
            outputs: what `inference` returns by default.
            kwargs: as for GeneralizedRCNN (backbone, proposal_generator, roi_heads, ...).
        """
        super().__init__(**kwargs)
        self.sem_seg_head = sem_seg_head
        self.combine = combine
        self.instance_loss_weight = float(instance_loss_weight)
        self.loss_weights = {k: float(v) for k, v in (loss_weights or {}).items()}
        self.loss_balancer = loss_balancer
        self.fast_inference = bool(fast_inference)
        self.channels_last = bool(channels_last)
        self._weights_channels_last = False
        self.fuse_norm = bool(fuse_norm)
        self._folded_norms = FoldedNorms()
        self.postprocess_threads = int(postprocess_threads)
        self.precision = check_precision(precision, self.device.type)
        self.dense_runner = dense_runner
        self.outputs = self._check_outputs(outputs)

    @classmethod
    def from_config(cls, cfg) -> dict:
        ret = super().from_config(cfg)
        ret["sem_seg_head"] = build_sem_seg_head(cfg, ret["backbone"].output_shape())
        ret["combine"] = build_combine(cfg)
        ret["instance_loss_weight"] = cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        ext = cfg.MODEL.PANOPTIC_EXT
        ret["loss_weights"] = dict(ext.LOSS_WEIGHTS)
        ret["loss_balancer"] = build_loss_balancer(cfg)
        ret["fast_inference"] = ext.FAST_INFERENCE
        ret["channels_last"] = ext.CHANNELS_LAST
        ret["fuse_norm"] = ext.FUSE_NORM
        ret["postprocess_threads"] = ext.POSTPROCESS_THREADS
        ret["precision"] = resolve_precision(cfg.TEST.PRECISION.lower(),
                                             torch.device(cfg.MODEL.DEVICE).type,
                                             ext.EMULATED_BF16)
        ret["outputs"] = tuple(ext.INFERENCE_OUTPUTS)
        return ret

    def forward(
        self, batched_inputs: list[dict[str, Any]]
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
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
        x = images.tensor
        training_channels_last = self.training_channels_last()
        self._set_conv_layout(training_channels_last)  # an evaluation may have changed it
        if training_channels_last:  # faster oneDNN convolutions (~10% fp32 forward, ~11% bf16)
            x = x.contiguous(memory_format=torch.channels_last)
        with shadowed(frozen_norm_training_patches(self.backbone) if self.fuse_norm else []):
            features = self.backbone(x)  # frozen norms folded: ~11% of R-50's step at 800 px

        gt_sem_seg = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.backbone.size_divisibility,
            self.sem_seg_head.ignore_value,
            self.backbone.padding_constraints,
        ).tensor
        _, losses = self.sem_seg_head(features, gt_sem_seg)

        # Instances.to makes new objects; their bitmasks become indexed (no copy per proposal)
        gt_instances = [with_indexed_masks(x["instances"].to(self.device)) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        if training_channels_last:  # both poolers read NCHW: one copy instead of one per call
            features = {k: v.contiguous() for k, v in features.items()}
        with shadowed(self._roi_align_patches()):
            _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.instance_loss_weight != 1.0:
            detector_losses = {k: v * self.instance_loss_weight for k, v in detector_losses.items()}
        losses.update(proposal_losses)
        losses.update(detector_losses)
        for name, w in self.loss_weights.items():
            if w != 1.0 and name in losses:
                losses[name] = losses[name] * w
        if self.loss_balancer is not None:  # learned factors on top of the fixed weights
            losses = self.loss_balancer(losses, self._fixed_loss_weights(losses))
        return losses

    def training_only_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes inference never reads (the learned task weights), so weight
        files without them still load for evaluation, the demo and export."""
        return () if self.loss_balancer is None else ("loss_balancer.",)

    def no_weight_decay_params(self) -> list[str]:
        """Local names of parameters the optimizer must not decay (the learned task weights)."""
        return [] if self.loss_balancer is None else self.loss_balancer.param_names()

    def _fixed_loss_weights(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Every fixed factor on each term (the heads' own loss weights, the instance weight,
        LOSS_WEIGHTS), for the logged effective weights."""
        head: dict[str, float] = {"loss_sem_seg": getattr(self.sem_seg_head, "loss_weight", 1.0)}
        head.update(getattr(self.proposal_generator, "loss_weight", None) or {})
        box = getattr(getattr(self.roi_heads, "box_predictor", None), "loss_weight", None)
        head.update(box if isinstance(box, dict) else {})
        mask_head = getattr(self.roi_heads, "mask_head", None)
        head["loss_mask"] = float(getattr(mask_head, "loss_weight", 1.0))
        roi = ("loss_cls", "loss_box_reg", "loss_mask")
        return {k: float(head.get(k, 1.0)) * self.loss_weights.get(k, 1.0)
                * (self.instance_loss_weight if k in roi else 1.0) for k in losses}

    # ---- inference ---------------------------------------------------------------------------

    def inference(
        self,
        batched_inputs: list[dict[str, Any]],
        do_postprocess: bool = True,
        outputs: Sequence[str] | None = None,
    ) -> list[dict[str, Any]] | tuple[list[Instances], torch.Tensor]:
        """Per image a dict with the requested `outputs` (default: the configured ones, all of
        "instances", "sem_seg" (C x H x W logits) and "panoptic_seg" unless changed) at the
        requested "height"/"width" (default: the input size).

        Asking only for "panoptic_seg" lets the fast path skip full-size semantic logits and
        paste only the masks the merge can use; the panoptic result is the same.
        With do_postprocess=False, returns the raw (detector results, semantic logits) at the
        network's input scale, as Detectron2's PanopticFPN does.
        """
        wanted = self._check_outputs(self.outputs if outputs is None else outputs)
        thresh = self._mask_score_thresh()
        net = self._run_network(batched_inputs, full_sem=not do_postprocess or "sem_seg" in wanted,
                                mask_thresh=thresh if do_postprocess and wanted == (
                                    "panoptic_seg",) else None)
        if not do_postprocess:
            return net.detections, net.sem_full
        results = []
        for i, inp in enumerate(batched_inputs):
            out, combine_inputs = self._postprocess(net, i, inp, wanted, thresh)
            if combine_inputs is not None:
                out["panoptic_seg"] = self.run_combine(combine_inputs)
            results.append({k: out[k] for k in OUTPUTS if k in out})
        return results

    def inference_for_combine(
        self, batched_inputs: list[dict[str, Any]], mask_score_thresh: float | None = None
    ) -> list[CombineInputs]:
        """Per image, what the panoptic merge reads (instances, semantic labels) at the
        requested output size: `inference`'s own post-processing, stopped before the merge.
        So `run_combine(x, combine)` gives what inference would with that merge strategy.

        `mask_score_thresh`: paste masks for instances scoring at least this (default: the
        merge's score threshold); a merge with a lower threshold would miss masks.
        """
        thresh = self._mask_score_thresh() if mask_score_thresh is None else mask_score_thresh
        net = self._run_network(batched_inputs, full_sem=False, mask_thresh=thresh)
        return [self._postprocess(net, i, inp, ("panoptic_seg",), thresh)[1]
                for i, inp in enumerate(batched_inputs)]

    def run_combine(
        self, inputs: CombineInputs, combine: Callable | None = None
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """The panoptic (id map, segments_info) of one image's `inference_for_combine`
        output, by `combine` (default: the model's merge strategy)."""
        combine = self.combine if combine is None else combine
        with intra_op_threads(self._postprocess_threads()):  # many small ops
            return combine(inputs.instances, inputs.sem_labels)

    def _run_network(self, batched_inputs: list[dict[str, Any]], full_sem: bool,
                     mask_thresh: float | None = None) -> _NetworkOutputs:
        """Backbone, semantic head, RPN and ROI heads, under the inference speed-ups.
        `mask_thresh`: only the merge reads the masks, those of instances scoring at least this
        (the mask head skips the others where masks are pasted for the merge alone)."""
        check_precision(self.precision, self.device.type)  # every runtime: one rule
        images = self.preprocess_image(batched_inputs)
        heads = self._roi_align_patches()
        if mask_thresh is not None and self._paste_for_combine_only():
            heads += masks_above(self.roi_heads, mask_thresh)
        if self.dense_runner is not None and not self.training:
            dense = self.dense_runner(self, images.tensor)
            if dense is not None:
                return self._run_heads(dense, images, full_sem, heads)
        sem_small = sem_full = None
        with self._inference_precision():
            x = images.tensor
            if self.channels_last:
                self._set_conv_layout(True)
                x = x.contiguous(memory_format=torch.channels_last)
            features = self.backbone(x)
            if self._fast_semantic():
                with autocast(self.device.type, self.precision):
                    sem_small = self.sem_seg_head.layers(features)
                sem_small = sem_small.float().contiguous()
            else:
                sem_full, _ = self.sem_seg_head(features, None)
            proposals, _ = self.proposal_generator(images, features, None)
            if self.channels_last:  # ROIAlign copies to NCHW on every call: copy once
                features = {k: v.contiguous() for k, v in features.items()}
            with shadowed(heads):
                detections, _ = self.roi_heads(images, features, proposals, None)
        del features
        if sem_small is not None and full_sem:
            sem_full = self._upsample(sem_small)
        return _NetworkOutputs(list(images.image_sizes), detections, sem_small, sem_full)

    def _run_heads(self, dense: DenseOutputs, images: ImageList, full_sem: bool,
                   heads: list[Patch]) -> _NetworkOutputs:
        """`_run_network` from a dense runner's outputs: proposals, NMS and ROIAlign stay
        torch's, the heads return or compute what the runner gives (`heads`: the torch-side
        patches of the ROI heads)."""
        with shadowed(dense.head_patches + heads):
            proposals, _ = self.proposal_generator(images, dense.features, None)
            detections, _ = self.roi_heads(images, dense.features, proposals, None)
        fast = self._fast_semantic()
        sem_full = self._upsample(dense.sem_small) if full_sem or not fast else None
        return _NetworkOutputs(list(images.image_sizes), detections,
                               dense.sem_small if fast else None, sem_full)

    def _postprocess(
        self,
        net: _NetworkOutputs,
        i: int,
        inp: dict[str, Any],
        wanted: Sequence[str],
        mask_score_thresh: float,
    ) -> tuple[dict[str, Any], CombineInputs | None]:
        """Image `i`'s requested "instances" / "sem_seg" outputs at its output size, and what
        the merge reads when "panoptic_seg" is requested (else None)."""
        det, image_size = net.detections[i], net.image_sizes[i]
        height = inp.get("height", image_size[0])
        width = inp.get("width", image_size[1])
        threads = self._postprocess_threads()
        stride = getattr(self.sem_seg_head, "common_stride", None)
        panoptic = "panoptic_seg" in wanted
        fast_sem = net.sem_small is not None
        out: dict[str, Any] = {}
        labels = None
        if "sem_seg" in wanted or not fast_sem:
            sem_r = self._sem_postprocess(net.sem_full[i], image_size, height, width)
            if "sem_seg" in wanted:
                out["sem_seg"] = sem_r
            if panoptic:
                labels = (semantic_argmax(net.sem_small[i], stride, image_size, (height, width),
                                          full=sem_r, threads=threads)
                          if fast_sem else class_argmax(sem_r))
        elif panoptic:
            labels = semantic_argmax(net.sem_small[i], stride, image_size, (height, width),
                                     threads=threads)
        with intra_op_threads(threads):  # many small ops; results do not depend on it
            if "instances" in wanted or (panoptic and not self._paste_for_combine_only()):
                det_r = detector_postprocess(det, height, width)
                if "instances" in wanted:
                    out["instances"] = det_r
            elif panoptic:
                det_r = paste_for_combine(det, height, width, mask_score_thresh)
        return out, (CombineInputs(det_r, labels) if panoptic else None)

    # ---- inference helpers -------------------------------------------------------------------

    @staticmethod
    def _check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
        if isinstance(outputs, str):
            outputs = (outputs,)
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {OUTPUTS}, got {outputs!r}")
        return tuple(outputs)

    def _fast_semantic(self) -> bool:
        """The pruned argmax pays on CPU; an accelerator is faster with Detectron2's full-size,
        batched computation (same labels either way)."""
        return (self.fast_inference and self.device.type == "cpu"
                and hasattr(self.sem_seg_head, "layers"))

    def _paste_for_combine_only(self) -> bool:
        """Pasting only the masks the merge reads, one by one, pays on CPU; an accelerator is
        faster with Detectron2's full-size, batched pasting (same result)."""
        return (self.fast_inference and self.device.type == "cpu"
                and getattr(self.combine, "reads_mask_crops", False))

    def _roi_align_patches(self) -> list[Patch]:
        """The ROI heads' CPU ROIAlign spread over torch's threads (the same numbers); in
        training always, at inference on the fast path."""
        if self.device.type != "cpu" or not (self.training or self.fast_inference):
            return []
        rh = self.roi_heads
        return parallel_roi_align([getattr(rh, "box_pooler", None),
                                   getattr(rh, "mask_pooler", None)], torch.get_num_threads())

    def _mask_score_thresh(self) -> float:
        return getattr(self.combine, "score_thresh", -float("inf"))

    def _postprocess_threads(self) -> int:
        return self.postprocess_threads if self.fast_inference else 0

    def _upsample(self, logits: torch.Tensor) -> torch.Tensor:
        """The head's final x`common_stride` upsampling, in float32 as Detectron2 runs it."""
        return F.interpolate(
            logits.float().contiguous(),
            scale_factor=self.sem_seg_head.common_stride,
            mode="bilinear",
            align_corners=False,
        )

    def _sem_postprocess(
        self, logits: torch.Tensor, image_size: tuple[int, int], height: int, width: int
    ) -> torch.Tensor:
        if self.fast_inference:  # the same values, minus a same-size resize (a copy)
            return semantic_resize(logits, tuple(image_size), (height, width))
        return sem_seg_postprocess(logits, image_size, height, width)

    def folded_norm_patches(self, precision: str) -> list[Patch]:
        """Patches folding each inference-mode norm into its convolution at `precision`, if
        FUSE_NORM (none otherwise): what inference and the exported graphs run."""
        return self._folded_norms.patches(self, precision) if self.fuse_norm else []

    def _set_conv_layout(self, channels_last: bool) -> None:
        """Conv weights in channels_last (faster convolutions with oneDNN) or the default
        layout; converted only when that changes."""
        if self._weights_channels_last == channels_last:
            return
        parts = [self.backbone, self.sem_seg_head, self.proposal_generator]
        if getattr(self.roi_heads, "mask_head", None) is not None:
            parts.append(self.roi_heads.mask_head)
        convert_channels_last(parts, channels_last)
        self._weights_channels_last = channels_last

    def training_channels_last(self) -> bool:
        """CHANNELS_LAST as training runs it: NCHW where channels_last slows the backward
        (`channels_last_training`: CPUs without AVX-512 convolutions)."""
        return self.channels_last and channels_last_training(self.device.type)

    @contextlib.contextmanager
    def _inference_precision(self) -> Iterator[None]:
        """While inside: conv + norm pairs folded (FUSE_NORM), and the convolutional parts under
        autocast (TEST.PRECISION). Everything numerically sensitive (box decoding, NMS, mask
        probabilities and pasting, semantic argmax, merge) still sees float32, as each autocast
        part returns float32. Nothing is changed outside inference (training, state_dict)."""
        patches = self.folded_norm_patches(self.precision)
        if self.precision != "fp32":
            parts = [(self.backbone, "forward"), (self.proposal_generator.rpn_head, "forward")]
            for name in ("box_head", "mask_head"):
                head = getattr(self.roi_heads, name, None)
                if head is not None:
                    parts.append((head, "layers" if hasattr(head, "layers") else "forward"))
            patches += [(obj, attr, float_outputs(getattr(obj, attr), self.device.type,
                                                  self.precision))
                        for obj, attr in parts]
        with shadowed(patches):
            yield
