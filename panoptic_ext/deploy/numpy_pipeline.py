"""The torch-free half of deployment: the numpy pipeline around the ONNX graphs, and the one
ONNX Runtime / OpenVINO session both TEST.RUNTIME and the exported runner compile graphs with.

Imports neither torch nor the rest of the package (numpy; onnxruntime or openvino when a session
is opened), so `tools/export_model.py --format onnx` copies it next to the model as it is.

Around the three graphs of `export.export_onnx` it does in numpy what Detectron2 does in torch
(anchors, box decoding, top-k, torchvision's NMS, level assignment, mask pasting, the merge),
step for step in float32; tests/deploy/test_numpy_pipeline.py pins each step against its torch
reference.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "ENGINES",
    "OnnxPanoptic",
    "Session",
    "apply_deltas",
    "assign_levels",
    "batched_nms",
    "keep_signal_stack",
    "nms",
    "openvino_config",
    "panoptic_from_detections",
    "paste_mask_crop",
    "resize_bilinear",
]

F32 = np.float32


# ---- boxes ---------------------------------------------------------------------------------


def apply_deltas(deltas: np.ndarray, boxes: np.ndarray, weights: Sequence[float],
                 scale_clamp: float) -> np.ndarray:
    """Detectron2's Box2BoxTransform.apply_deltas: (N, k*4) deltas on (N, 4) XYXY boxes."""
    deltas = deltas.astype(F32, copy=False)
    boxes = boxes.astype(F32, copy=False)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + F32(0.5) * widths
    ctr_y = boxes[:, 1] + F32(0.5) * heights
    wx, wy, ww, wh = (F32(w) for w in weights)
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = np.minimum(deltas[:, 2::4] / ww, F32(scale_clamp))
    dh = np.minimum(deltas[:, 3::4] / wh, F32(scale_clamp))
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    with np.errstate(over="ignore"):
        pred_w = np.exp(dw) * widths[:, None]
        pred_h = np.exp(dh) * heights[:, None]
    out = np.stack([pred_ctr_x - F32(0.5) * pred_w, pred_ctr_y - F32(0.5) * pred_h,
                    pred_ctr_x + F32(0.5) * pred_w, pred_ctr_y + F32(0.5) * pred_h], axis=-1)
    return out.reshape(deltas.shape)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Detectron2's Boxes.clip (x in [0, width], y in [0, height]), in place."""
    np.clip(boxes[..., 0::2], 0, width, out=boxes[..., 0::2])
    np.clip(boxes[..., 1::2], 0, height, out=boxes[..., 1::2])
    return boxes


def _stable_desc(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores, kind="stable")


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        block: int = 512) -> np.ndarray:
    """torchvision.ops.nms: greedy by decreasing score, a box dropped when its float32 IoU with
    a kept one exceeds the threshold. Indices kept, by decreasing score.

    The pairwise "overlaps too much" matrix is computed in row blocks (vectorized), then the
    greedy pass only ORs boolean rows: far fewer numpy calls than one IoU pass per kept box."""
    order = _stable_desc(scores)
    b = boxes.astype(F32, copy=False)[order]
    n = len(order)
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    over = np.empty((n, n), dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(0, n, block):
            e = min(s + block, n)
            w = np.maximum(F32(0), np.minimum(x2[s:e, None], x2) - np.maximum(x1[s:e, None], x1))
            h = np.maximum(F32(0), np.minimum(y2[s:e, None], y2) - np.maximum(y1[s:e, None], y1))
            inter = w * h
            iou = inter / (areas[s:e, None] + areas[None, :] - inter)
            over[s:e] = iou.astype(np.float64) > iou_threshold
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]  # rows of earlier boxes are settled already: harmless
    return order[np.asarray(keep, dtype=np.int64)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray,
                iou_threshold: float) -> np.ndarray:
    """torchvision.ops.batched_nms on CPU: NMS within each `idxs` group, by the same one of its
    two algorithms (offset coordinates up to 4000 values, else per group)."""
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = boxes.astype(F32, copy=False)
    if boxes.size > 4000:
        keep_mask = np.zeros(len(scores), dtype=bool)
        for c in np.unique(idxs):
            cur = np.nonzero(idxs == c)[0]
            keep_mask[cur[nms(boxes[cur], scores[cur], iou_threshold)]] = True
        kept = np.nonzero(keep_mask)[0]
        return kept[_stable_desc(scores[kept])]
    offsets = idxs.astype(F32) * (boxes.max() + F32(1))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest values, largest first (torch.topk)."""
    if k >= values.size:
        return _stable_desc(values)
    part = np.argpartition(-values, k - 1)[:k]
    return part[_stable_desc(values[part])]


def assign_levels(boxes: np.ndarray, pooler: dict) -> np.ndarray:
    """Detectron2's assign_boxes_to_levels: FPN level index (from the pooler's first level) of
    each box, by its size (Eqn. 1 of the FPN paper)."""
    sizes = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    lvl = np.floor(F32(pooler["canonical_level"])
                   + np.log2(sizes / F32(pooler["canonical_box_size"]) + F32(1e-8)))
    lvl = np.clip(lvl, pooler["min_level"], pooler["max_level"])
    return (lvl - pooler["min_level"]).astype(np.int64)


# ---- masks and semantic labels ---------------------------------------------------------------


def paste_mask_crop(mask: np.ndarray, box: np.ndarray, img_h: int, img_w: int,
                    threshold: float = 0.5) -> tuple[int, int, np.ndarray]:
    """One (M, M) mask probability map pasted around its box and thresholded: (y0, x0, bool
    crop), with grid_sample's bilinear weights (align_corners=False, zero padding), as
    panoptic_ext.modeling.postprocess.paste_mask_crop (Detectron2's paste on CPU)."""
    bx0, by0, bx1, by1 = (F32(v) for v in box)
    x0_int = int(max(np.floor(bx0) - 1, 0))
    y0_int = int(max(np.floor(by0) - 1, 0))
    x1_int = int(min(np.ceil(bx1) + 1, img_w))
    y1_int = int(min(np.ceil(by1) + 1, img_h))
    mh, mw = mask.shape
    img_y = (np.arange(y0_int, y1_int, dtype=F32) + F32(0.5) - by0) / (by1 - by0) * F32(2) - F32(1)
    img_x = (np.arange(x0_int, x1_int, dtype=F32) + F32(0.5) - bx0) / (bx1 - bx0) * F32(2) - F32(1)
    iy = ((img_y + F32(1)) * F32(mh) - F32(1)) / F32(2)
    ix = ((img_x + F32(1)) * F32(mw) - F32(1)) / F32(2)
    fy, fx = np.floor(iy), np.floor(ix)
    wy1, wx1 = iy - fy, ix - fx
    wy0, wx0 = F32(1) - wy1, F32(1) - wx1
    padded = np.zeros((mh + 2, mw + 2), dtype=F32)
    padded[1:-1, 1:-1] = mask
    ry0 = np.clip(fy.astype(np.int64) + 1, 0, mh + 1)
    ry1 = np.clip(fy.astype(np.int64) + 2, 0, mh + 1)
    rx0 = np.clip(fx.astype(np.int64) + 1, 0, mw + 1)
    rx1 = np.clip(fx.astype(np.int64) + 2, 0, mw + 1)
    top, bottom = padded[ry0], padded[ry1]
    out = ((top[:, rx0] * (wy0[:, None] * wx0[None, :]))
           + (top[:, rx1] * (wy0[:, None] * wx1[None, :]))
           + (bottom[:, rx0] * (wy1[:, None] * wx0[None, :]))
           + (bottom[:, rx1] * (wy1[:, None] * wx1[None, :])))
    return y0_int, x0_int, out >= threshold


def _source_index(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray]:
    """Bilinear (align_corners=False) source indices and weights along one axis, as PyTorch's
    CPU kernel computes them (float32 scale, the coordinate rounded once)."""
    ratio = F32(in_len) / F32(out_len)
    src = (np.float64(ratio) * (np.arange(out_len) + 0.5) - 0.5).astype(F32)
    src = np.maximum(src, F32(0))
    i0 = src.astype(np.int64)
    i1 = i0 + (i0 < in_len - 1)
    w1 = src - i0.astype(F32)
    return i0, i1, F32(1) - w1, w1


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(C, H, W) float32 resized like F.interpolate(mode="bilinear", align_corners=False)."""
    if x.shape[1:] == (out_h, out_w):
        return x
    c0, c1, cw0, cw1 = _source_index(out_w, x.shape[2])
    tmp = cw0 * x[:, :, c0] + cw1 * x[:, :, c1]
    r0, r1, rw0, rw1 = _source_index(out_h, x.shape[1])
    return rw0[:, None] * tmp[:, r0, :] + rw1[:, None] * tmp[:, r1, :]


def panoptic_from_detections(
    detections: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    sem_logits: np.ndarray,
    sizes: tuple[tuple[int, int], tuple[int, int]],
    combine: dict[str, float],
    mask_threshold: float = 0.5,
) -> tuple[np.ndarray, ...]:
    """Panoptic map and segments of one image from its `detections` at the network's input size
    (boxes, scores, classes, (N, M, M) mask probabilities), the padded input's (C, H', W')
    semantic logits and `sizes` (the input's, the output's), by the
    steps of panoptic_ext.modeling.postprocess.panoptic_from_detections (same outputs).
    `combine`: the merge thresholds by their MODEL.PANOPTIC_FPN.COMBINE key names, as the export
    writes them (OVERLAP_THRESH, STUFF_AREA_LIMIT, INSTANCES_CONFIDENCE_THRESH).

    Returns (panoptic (H, W) int32, ids, contiguous category ids, isthing, scores (-1 for stuff),
    instance indices (-1 for stuff), areas)."""
    boxes, scores, classes, mask_probs = detections
    image_size, (out_h, out_w) = sizes
    boxes = boxes.astype(F32).copy()
    boxes[:, 0::2] *= F32(float(out_w) / float(image_size[1]))
    boxes[:, 1::2] *= F32(float(out_h) / float(image_size[0]))
    clip_boxes(boxes, out_h, out_w)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    boxes, scores, classes, mask_probs = boxes[keep], scores[keep], classes[keep], mask_probs[keep]
    order = _stable_desc(scores)
    order = order[scores[order] >= F32(combine["INSTANCES_CONFIDENCE_THRESH"])]

    panoptic = np.zeros((out_h, out_w), dtype=np.int32)
    things = []
    for i in order:
        y0, x0, m = paste_mask_crop(mask_probs[i], boxes[i], out_h, out_w, mask_threshold)
        area = int(m.sum())
        if area == 0:
            continue
        region = panoptic[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
        taken = region > 0
        if int((m & taken).sum()) * 1.0 / area > combine["OVERLAP_THRESH"]:
            continue
        things.append(i)
        region[m & ~taken] = len(things)

    sem = sem_logits[:, : image_size[0], : image_size[1]]
    labels = resize_bilinear(np.ascontiguousarray(sem), out_h, out_w).argmax(axis=0)
    free = panoptic == 0
    counts = np.bincount(labels[free].ravel(), minlength=sem.shape[0])
    present = np.bincount(labels.ravel(), minlength=sem.shape[0]) > 0
    values = np.arange(counts.size)
    take = present & (values != 0) & (counts.astype(np.float64) >= combine["STUFF_AREA_LIMIT"])
    lut = ((np.cumsum(take) + len(things)) * take).astype(np.int32)
    panoptic = np.where(free, lut[labels], panoptic)
    stuff = values[take]

    n_things, n = len(things), len(things) + len(stuff)
    things_a = np.asarray(things, dtype=np.int64)
    none = np.full(len(stuff), -1, dtype=np.int64)
    ids = np.arange(1, n + 1, dtype=np.int32)
    cats = np.concatenate([classes[things_a].astype(np.int64), stuff.astype(np.int64)])
    isthing = np.arange(n) < n_things
    seg_scores = np.concatenate([scores[things_a].astype(F32), none.astype(F32)])
    inst = np.concatenate([things_a, none])
    areas = np.bincount(panoptic.ravel(), minlength=n + 1)[1:].astype(np.int64)
    return panoptic, ids, cats, isthing, seg_scores, inst, areas


# ---- the model -----------------------------------------------------------------------------


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Restore this thread's alternate signal stack after OpenVINO's CPU plugin replaced it.

    The plugin installs its own (small) alternate stack on the calling thread; Python's signal
    handlers run on it, and the next signal (e.g. SIGCHLD from a DataLoader worker) then
    crashed the process with a segmentation fault. No-op where libc has no sigaltstack.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = _SignalStack()
        saved = libc.sigaltstack(None, ctypes.byref(old)) == 0
    except (OSError, AttributeError):
        saved = False
    try:
        yield
    finally:
        if saved:
            libc.sigaltstack(ctypes.byref(old), None)


ENGINES = ("onnxruntime", "openvino")


def openvino_config(precision: str, threads: int) -> dict[str, Any]:
    """OpenVINO CPU compile properties: "bf16" -> the bf16 inference precision hint (used where
    the CPU has bf16 instructions), else f32 (OpenVINO's CPU default would be bf16 on AMX
    machines); `threads` (0: OpenVINO's default)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class Session:
    """One ONNX graph (bytes, or a file: .onnx, or OpenVINO's IR .xml) compiled by `engine`
    ("onnxruntime" or "openvino") for the CPU: `session(*arrays)` takes the inputs in the
    graph's order, `session.run(feeds)` by name; both return the outputs as a list.

    The one place either engine is set up, for TEST.RUNTIME and for the exported runner alike.
    ONNX Runtime's CPU provider computes in fp32 whatever `precision` says."""

    def __init__(self, engine: str, model: str | bytes, precision: str = "fp32", threads: int = 0):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        if engine == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads > 0:
                opts.intra_op_num_threads = threads
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self._session.get_inputs()]
            return
        with keep_signal_stack():  # the CPU plugin swaps the signal stack (segfaults)
            import openvino as ov

            core = ov.Core()
            graph = core.read_model(*((model, b"") if isinstance(model, bytes) else (model,)))
            self._compiled = core.compile_model(graph, "CPU", openvino_config(precision, threads))
        self.input_names = [i.get_any_name() for i in self._compiled.inputs]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        if self.engine == "onnxruntime":
            return self._session.run(None, dict(zip(self.input_names, arrays, strict=True)))
        with keep_signal_stack():
            return list(self._compiled(list(arrays)).to_tuple())

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self(*[feeds[n] for n in self.input_names])


class OnnxPanoptic:
    """The exported model: `model(chw, (height, width))` -> panoptic_from_detections' arrays
    for a (3, H', W') float32 network input (resized as DefaultPredictor does) and the size
    the panoptic map is wanted at. `engine`: "onnxruntime" or "openvino" (default: the
    export's, export_info.json "onnx" -> "engine"); OpenVINO reads the .onnx files as well
    as its own IR (.xml) of --format openvino."""

    def __init__(self, model_dir: str, info: dict, threads: int = 0, engine: str | None = None,
                 precision: str = "fp32"):
        self.info = info
        self.spec = info["onnx"]
        engine = engine or self.spec.get("engine", "onnxruntime")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine = engine
        files = dict(self.spec["files"])
        if engine == "openvino":
            files = dict(self.spec.get("openvino_files", files))

        def session(name: str) -> Session:
            path = os.path.join(model_dir, files[name])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing: re-export the model "
                                        "(tools/export_model.py --format onnx)")
            try:
                return Session(engine, path, precision, threads)
            except Exception as e:  # each engine has its own error types
                raise ValueError(f"{path} cannot be loaded by {engine} ({e}); the file is "
                                 "damaged or incomplete: re-export the model "
                                 "(tools/export_model.py --format onnx)") from e

        self.dense = session("dense")
        self.box_head = session("box_head")
        self.mask_head = session("mask_head") if "mask_head" in files else None

    # --- steps ---

    def normalize_pad(self, chw: np.ndarray) -> np.ndarray:
        """(1, 3, H'', W'') normalized input, zero-padded to the size divisibility (as
        Detectron2's preprocess_image and ImageList.from_tensors)."""
        s = self.spec
        mean = np.asarray(s["pixel_mean"], dtype=F32)[:, None, None]
        std = np.asarray(s["pixel_std"], dtype=F32)[:, None, None]
        x = (chw.astype(F32) - mean) / std
        div = max(int(s["size_divisibility"]), 1)
        h, w = x.shape[1:]
        ph, pw = -(-h // div) * div, -(-w // div) * div
        out = np.zeros((1, 3, ph, pw), dtype=F32)
        out[0, :, :h, :w] = x
        return out

    def anchors(self, level: int, height: int, width: int) -> np.ndarray:
        """(H*W*A, 4) anchors of one feature map (Detectron2's DefaultAnchorGenerator)."""
        r = self.spec["rpn"]
        stride = r["strides"][level]
        cell = np.asarray(r["cell_anchors"][level], dtype=F32).reshape(-1, 4)
        start = F32(r["anchor_offset"] * stride)
        sx = start + np.arange(width, dtype=F32) * F32(stride)
        sy = start + np.arange(height, dtype=F32) * F32(stride)
        yy, xx = np.meshgrid(sy, sx, indexing="ij")
        shifts = np.stack([xx.ravel(), yy.ravel(), xx.ravel(), yy.ravel()], axis=1)
        return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)

    def proposals(self, objectness: list[np.ndarray], deltas: list[np.ndarray],
                  image_size: tuple[int, int]) -> np.ndarray:
        """The RPN's proposal boxes (by decreasing objectness): decode, per-level top-k, clip,
        drop empty ones, NMS per level, keep the best post_nms_topk."""
        r = self.spec["rpn"]
        boxes, scores, levels = [], [], []
        for lvl, (obj, dl) in enumerate(zip(objectness, deltas, strict=True)):
            _, a, h, w = obj.shape
            logits = obj.transpose(0, 2, 3, 1).reshape(-1)
            d = dl.reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4)
            idx = _topk(logits, min(logits.size, r["pre_nms_topk"]))
            anchors = self.anchors(lvl, h, w)[idx]
            boxes.append(apply_deltas(d[idx], anchors, r["weights"], r["scale_clamp"]))
            scores.append(logits[idx])
            levels.append(np.full(idx.size, lvl, dtype=np.int64))
        boxes, scores, levels = (np.concatenate(v) for v in (boxes, scores, levels))
        valid = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
        boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        clip_boxes(boxes, *image_size)
        keep = (((boxes[:, 2] - boxes[:, 0]) > r["min_box_size"])
                & ((boxes[:, 3] - boxes[:, 1]) > r["min_box_size"]))
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, r["nms_thresh"])[: r["post_nms_topk"]]
        return boxes[keep]

    def run_roi_head(self, session, features: list[np.ndarray], boxes: np.ndarray,
                     pooler: dict) -> list[np.ndarray]:
        """A head graph's outputs for `boxes` (in their order): the boxes go to the graph's
        RoiAlign of their FPN level (one input per level), rows come back level by level."""
        lvl = assign_levels(boxes, pooler)
        feeds = {}
        order = []
        for k, name in enumerate(self.spec["roi_features"]):
            idx = np.nonzero(lvl == k)[0]
            order.append(idx)
            feeds[f"feat_{name}"] = features[k]
            feeds[f"rois_{name}"] = np.ascontiguousarray(boxes[idx], dtype=F32)
        outs = session.run(feeds)
        inverse = np.empty(len(boxes), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(boxes))
        return [o[inverse] for o in outs]

    def detect(self, features: list[np.ndarray], proposals: np.ndarray,
               image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detectron2's fast_rcnn_inference for one image: (boxes, scores, classes)."""
        b = self.spec["box"]
        if len(proposals) == 0:
            return np.zeros((0, 4), F32), np.zeros(0, F32), np.zeros(0, np.int64)
        logits, deltas = self.run_roi_head(self.box_head, features, proposals, b["pooler"])
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        boxes = apply_deltas(deltas, proposals, b["weights"], b["scale_clamp"])
        valid = np.isfinite(boxes).all(axis=1) & np.isfinite(probs).all(axis=1)
        boxes, probs = boxes[valid], probs[valid]
        probs = probs[:, :-1]
        k = boxes.shape[1] // 4
        boxes = clip_boxes(boxes.reshape(-1, 4), *image_size).reshape(-1, k, 4)
        mask = probs > F32(b["score_thresh"])
        rows, cls = np.nonzero(mask)
        boxes = boxes[rows, 0] if k == 1 else boxes[mask]
        scores = probs[mask]
        keep = batched_nms(boxes, scores, cls, b["nms_thresh"])
        if b["topk_per_image"] >= 0:
            keep = keep[: b["topk_per_image"]]
        return boxes[keep], scores[keep], cls[keep].astype(np.int64)

    def masks(self, features: list[np.ndarray], boxes: np.ndarray,
              classes: np.ndarray) -> np.ndarray:
        """(N, M, M) mask probabilities of the detections' classes."""
        m = self.spec["mask"]
        if len(boxes) == 0 or self.mask_head is None:
            size = m["resolution"] if m else 1
            return np.zeros((len(boxes), size, size), F32)
        (logits,) = self.run_roi_head(self.mask_head, features, boxes, m["pooler"])
        chan = classes if logits.shape[1] > 1 else np.zeros_like(classes)
        sel = logits[np.arange(len(boxes)), chan]
        return (F32(1) / (F32(1) + np.exp(-sel))).astype(F32)

    def __call__(self, chw: np.ndarray, out_size: tuple[int, int]) -> tuple[np.ndarray, ...]:
        image_size = (int(chw.shape[1]), int(chw.shape[2]))
        outs = self.dense(self.normalize_pad(chw))
        names = self.spec["dense_features"]
        n_feat, n_rpn = len(names), len(self.spec["rpn"]["strides"])
        by_name = dict(zip(names, outs[1:1 + n_feat], strict=True))
        sem, features = outs[0], [by_name[f] for f in self.spec["roi_features"]]
        objectness = outs[1 + n_feat:1 + n_feat + n_rpn]
        deltas = outs[1 + n_feat + n_rpn:]
        proposals = self.proposals(objectness, deltas, image_size)
        boxes, scores, classes = self.detect(features, proposals, image_size)
        detections = (boxes, scores, classes, self.masks(features, boxes, classes))
        sizes = (image_size, (int(out_size[0]), int(out_size[1])))
        return panoptic_from_detections(detections, sem[0], sizes, self.info["combine"],
                                        self.spec["mask_threshold"])
