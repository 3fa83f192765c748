"""PanopticFPNExt: Mask R-CNN + semantic FPN head + a pluggable panoptic merge.

Submodule names follow Detectron2's `PanopticFPN`, so its checkpoints (including the model zoo's
`panoptic_fpn_R_50_*`) load with no missing or unexpected keys.
"""

import contextlib
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.layers.mask_ops import _do_paste_mask
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_sem_seg_head
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import ImageList, Instances
from torch import nn

from .combine import build_combine
from .postprocess import intra_op_threads, semantic_argmax

__all__ = ["PanopticFPNExt", "paste_for_merge"]

logger = logging.getLogger(__name__)

_OUTPUTS = ("instances", "sem_seg", "panoptic_seg")
_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MASK_THRESHOLD = 0.5  # detector_postprocess's default, which Detectron2's PanopticFPN uses


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
        fast_inference: bool = True,
        channels_last: bool = False,
        fuse_norm: bool = False,
        postprocess_threads: int = 0,
        precision: str = "fp32",
        outputs: Sequence[str] = _OUTPUTS,
        **kwargs,
    ):
        """
        Args:
            sem_seg_head: semantic branch; must expose `ignore_value` and `layers(features)`.
            combine: the panoptic merge, called as `combine(instances, sem_labels)`.
            instance_loss_weight: multiplies every ROI-head loss (box and mask branches).
            loss_weights: extra per-loss multipliers by loss name.
            fast_inference: post-process with less work for the same outputs (see `inference`).
            channels_last: run the convolutional parts in channels_last at inference (faster on
                CPU; low bits of the results differ from the default layout).
            fuse_norm: fold inference-mode batch norms into the preceding convolutions at
                inference (faster; low bits differ).
            postprocess_threads: torch CPU threads for the fast path's post-processing (0:
                unchanged); its many small ops lose more to thread hand-offs than they gain.
            precision: "fp32", "bf16" or "fp16" (CUDA) autocast for the convolutional parts at
                inference.
            outputs: what `inference` returns by default.
            kwargs: as for GeneralizedRCNN (backbone, proposal_generator, roi_heads, ...).
        """
        super().__init__(**kwargs)
        self.sem_seg_head = sem_seg_head
        self.combine = combine
        self.instance_loss_weight = float(instance_loss_weight)
        self.loss_weights = {k: float(v) for k, v in (loss_weights or {}).items()}
        self.fast_inference = bool(fast_inference)
        self.channels_last = bool(channels_last)
        self._channels_last_done = False
        self.fuse_norm = bool(fuse_norm)
        self._fused_cache: dict = {}
        self.postprocess_threads = int(postprocess_threads)
        if precision not in _PRECISIONS:
            raise ValueError(f"TEST.PRECISION must be one of {sorted(_PRECISIONS)}, "
                             f"got {precision!r}")
        self.precision = precision
        self.outputs = self._check_outputs(outputs)

    @classmethod
    def from_config(cls, cfg) -> dict:
        ret = super().from_config(cfg)
        ret["sem_seg_head"] = build_sem_seg_head(cfg, ret["backbone"].output_shape())
        ret["combine"] = build_combine(cfg)
        ret["instance_loss_weight"] = cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        ext = cfg.MODEL.PANOPTIC_EXT
        ret["loss_weights"] = dict(ext.LOSS_WEIGHTS)
        ret["fast_inference"] = ext.FAST_INFERENCE
        ret["channels_last"] = ext.CHANNELS_LAST
        ret["fuse_norm"] = ext.FUSE_NORM
        ret["postprocess_threads"] = ext.POSTPROCESS_THREADS
        ret["precision"] = cfg.TEST.PRECISION.lower()
        ret["outputs"] = tuple(ext.INFERENCE_OUTPUTS)
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

    def inference(
        self,
        batched_inputs: list[dict[str, torch.Tensor]],
        do_postprocess: bool = True,
        outputs: Sequence[str] | None = None,
    ):
        """Per image a dict with the requested `outputs` (default: the configured ones, all of
        "instances", "sem_seg" (C x H x W logits) and "panoptic_seg" unless changed) at the
        requested "height"/"width" (default: the input size).

        Asking only for "panoptic_seg" lets the fast path skip full-size semantic logits and
        paste only the masks the merge can use; the panoptic result is the same.
        With do_postprocess=False, returns the raw (detector results, semantic logits) at the
        network's input scale, as Detectron2's PanopticFPN does.
        """
        wanted = self._check_outputs(self.outputs if outputs is None else outputs)
        images = self.preprocess_image(batched_inputs)
        with self._inference_precision():
            x = images.tensor
            if self.channels_last:
                self._to_channels_last()
                x = x.contiguous(memory_format=torch.channels_last)
            features = self.backbone(x)
            # the pruned argmax and per-mask pasting pay on CPU; an accelerator is faster
            # with Detectron2's full-size, batched computations (same results either way)
            on_cpu = self.device.type == "cpu"
            fast_sem = self.fast_inference and on_cpu and hasattr(self.sem_seg_head, "layers")
            if fast_sem:
                with self._autocast():
                    sem_small = self.sem_seg_head.layers(features)
                sem_small = sem_small.float().contiguous()
            else:
                sem_full, _ = self.sem_seg_head(features, None)
            proposals, _ = self.proposal_generator(images, features, None)
            if self.channels_last:  # ROIAlign copies to NCHW on every call: copy once
                features = {k: v.contiguous() for k, v in features.items()}
            detections, _ = self.roi_heads(images, features, proposals, None)
        del features
        if fast_sem and (not do_postprocess or "sem_seg" in wanted):
            sem_full = self._upsample(sem_small)
        if not do_postprocess:
            return detections, sem_full

        threads = self.postprocess_threads if self.fast_inference else 0
        stride = getattr(self.sem_seg_head, "common_stride", None)
        results = []
        for i, (det, inp, image_size) in enumerate(
            zip(detections, batched_inputs, images.image_sizes, strict=False)
        ):
            height = inp.get("height", image_size[0])
            width = inp.get("width", image_size[1])
            out: dict = {}
            labels = None
            if "sem_seg" in wanted or not fast_sem:
                sem_r = self._sem_postprocess(sem_full[i], image_size, height, width)
                if "sem_seg" in wanted:
                    out["sem_seg"] = sem_r
                if "panoptic_seg" in wanted:
                    labels = (semantic_argmax(sem_small[i], stride, image_size, (height, width),
                                              full=sem_r, threads=threads)
                              if fast_sem else sem_r.argmax(dim=0))
            elif "panoptic_seg" in wanted:
                labels = semantic_argmax(sem_small[i], stride, image_size, (height, width),
                                         threads=threads)
            crops_ok = self.fast_inference and on_cpu and hasattr(self.combine, "combine_crops")
            with intra_op_threads(threads):  # many small ops; results do not depend on it
                if "instances" in wanted or not crops_ok:
                    det_r = detector_postprocess(det, height, width)
                    if "instances" in wanted:
                        out["instances"] = det_r
                    if labels is not None:
                        out["panoptic_seg"] = self.combine(det_r, labels)
                elif labels is not None:
                    det_r, crops = paste_for_merge(
                        det, height, width, getattr(self.combine, "score_thresh", -float("inf"))
                    )
                    out["panoptic_seg"] = self.combine.combine_crops(det_r, crops, labels)
            results.append({k: out[k] for k in _OUTPUTS if k in out})
        return results

    # ---- inference helpers -------------------------------------------------------------------

    @staticmethod
    def _check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
        if isinstance(outputs, str):
            outputs = (outputs,)
        unknown = [o for o in outputs if o not in _OUTPUTS]
        if unknown or not outputs:
            raise ValueError(f"outputs must be a non-empty subset of {_OUTPUTS}, got {outputs!r}")
        return tuple(outputs)

    def _upsample(self, logits: torch.Tensor) -> torch.Tensor:
        """The head's final x`common_stride` upsampling, in float32 as Detectron2 runs it."""
        return F.interpolate(
            logits.float().contiguous(),
            scale_factor=self.sem_seg_head.common_stride,
            mode="bilinear",
            align_corners=False,
        )

    def _sem_postprocess(self, logits: torch.Tensor, image_size, height: int, width: int):
        if self.fast_inference and (height, width) == tuple(image_size):
            # Detectron2 resizes to the same size here, which copies every value
            return logits[:, : image_size[0], : image_size[1]].contiguous()
        return sem_seg_postprocess(logits, image_size, height, width)

    def _to_channels_last(self) -> None:
        """Convert conv weights once; channels_last convolutions are faster with oneDNN."""
        if self._channels_last_done:
            return
        parts = [self.backbone, self.sem_seg_head, self.proposal_generator]
        if getattr(self.roi_heads, "mask_head", None) is not None:
            parts.append(self.roi_heads.mask_head)
        for m in parts:
            m.to(memory_format=torch.channels_last)
        self._channels_last_done = True

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_PRECISIONS[self.precision])

    @contextlib.contextmanager
    def _inference_precision(self):
        """While inside: conv + norm pairs folded (FUSE_NORM), and the convolutional parts under
        autocast (TEST.PRECISION). Everything numerically sensitive (box decoding, NMS, mask
        probabilities and pasting, semantic argmax, merge) still sees float32, as each autocast
        part returns float32. Nothing is changed outside inference (training, state_dict)."""
        patches: list[tuple[object, str, Callable]] = []
        if self.fuse_norm:
            patches += [(conv, "forward", fwd) for conv, fwd in self._fused_forwards()]
        if self.precision != "fp32":
            if self.precision == "fp16" and self.device.type == "cpu":
                raise ValueError("TEST.PRECISION='fp16' needs CUDA; use 'bf16' on CPU")
            parts = [(self.backbone, "forward"), (self.proposal_generator.rpn_head, "forward")]
            for name in ("box_head", "mask_head"):
                head = getattr(self.roi_heads, name, None)
                if head is not None:
                    parts.append((head, "layers" if hasattr(head, "layers") else "forward"))
            patches += [(obj, attr, _float_outputs(getattr(obj, attr), self._autocast))
                        for obj, attr in parts]
        for obj, attr, fn in patches:
            obj.__dict__[attr] = fn  # an instance attribute shadows the method
        try:
            yield
        finally:
            for obj, attr, _ in reversed(patches):
                obj.__dict__.pop(attr, None)

    def _fused_forwards(self) -> list[tuple[nn.Module, Callable]]:
        """Forwards of Detectron2 `Conv2d`s followed by an inference-mode batch norm, with the
        norm folded into the convolution's weight and bias: one pass over each activation map
        instead of two. Folded weights are cached and rebuilt when any source tensor changes
        (in-place updates bump `_version`; `load_state_dict` and `.to()` do)."""
        out = []
        for conv in self.modules():
            norm = getattr(conv, "norm", None)
            if not isinstance(conv, Conv2d) or not _foldable(norm):
                continue
            srcs = [conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
            if conv.bias is not None:
                srcs.append(conv.bias)
            key = (self.precision, *((t.data_ptr(), t._version) for t in srcs))
            cached = self._fused_cache.get(conv)
            if cached is None or cached[0] != key:
                with torch.no_grad():
                    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
                    weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
                    bias = norm.bias - norm.running_mean * scale
                    if conv.bias is not None:
                        bias = bias + conv.bias * scale
                fmt = (torch.channels_last
                       if conv.weight.is_contiguous(memory_format=torch.channels_last)
                       and not conv.weight.is_contiguous() else torch.contiguous_format)
                dtype = _PRECISIONS[self.precision]  # autocast would cast at every call
                cached = (key, weight.to(dtype).contiguous(memory_format=fmt), bias.to(dtype))
                self._fused_cache[conv] = cached
            out.append((conv, _folded_forward(conv, cached[1], cached[2])))
        return out


def _foldable(norm) -> bool:
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training
            and norm.track_running_stats and norm.affine and norm.running_var is not None)


def _folded_forward(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        w, b = weight, bias
        if w.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
            w, b = w.to(x.dtype), b.to(x.dtype)  # a reduced-precision copy run outside autocast
        y = F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
        return conv.activation(y) if conv.activation is not None else y

    return forward


def _to_float(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def _float_outputs(fn: Callable, autocast: Callable) -> Callable:
    """`fn` run under autocast, its floating outputs returned as float32."""

    def run(*args, **kwargs):
        with autocast():
            out = fn(*args, **kwargs)
        return _to_float(out)

    return run


def paste_for_merge(
    det: Instances, height: int, width: int, score_thresh: float
) -> tuple[Instances, list]:
    """`detector_postprocess` for the panoptic merge alone: the same boxes, scores and classes
    (same instance indices), but masks pasted only for instances scoring at least
    `score_thresh`, each as a crop (y0, x0, bool mask) of its box, as the merge reads them.
    Each paste is Detectron2's own per-mask call on CPU, so pixels are identical."""
    fields = {k: v for k, v in det.get_fields().items() if k != "pred_masks"}
    light = Instances(det.image_size, **fields)
    light.src_index = torch.arange(len(det), device=det.scores.device)
    out = detector_postprocess(light, height, width)
    src = out.src_index.tolist()
    out.remove("src_index")
    crops: list = [None] * len(out)
    if not det.has("pred_masks"):
        return out, crops
    masks = det.pred_masks
    boxes = out.pred_boxes.tensor
    for i in (out.scores >= score_thresh).nonzero().flatten().tolist():
        pasted, (sy, sx) = _do_paste_mask(
            masks[src[i] : src[i] + 1], boxes[i : i + 1], height, width, skip_empty=True
        )
        crops[i] = (int(sy.start), int(sx.start), pasted[0] >= _MASK_THRESHOLD)
    return out, crops
