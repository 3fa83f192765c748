"""The model behind the HTTP API, with no HTTP in it: decoding and checking uploads, per-request
merge settings, running a batch, and the COCO panoptic answer.

The FastAPI app (app.py) and the Ray Serve deployment (ray_app.py) both drive a
:class:`PanopticService`, so a result is the same whichever serves it, and the same as
tools/demo.py's files: predictions go through :class:`~panoptic_ext.apps.demo.PanopticDemo`
(``predict_batch`` and ``coco``), images are decoded by the demo's reader.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from detectron2.config import CfgNode
from detectron2.data.transforms import ResizeShortestEdge
from PIL import Image, UnidentifiedImageError

from ..apps.demo import PanopticDemo
from ..data.metadata import contiguous_to_dataset_ids, dataset_categories
from ..deploy.runner_io import image_array
from ..deploy.runtime import resolve_runtime
from ..formats import encode_panoptic_png
from ..modeling.combine import build_combine

__all__ = ["BadInput", "Job", "PanopticService", "ServeSettings", "decode_image"]

logger = logging.getLogger(__name__)

MERGE_KEY = "MODEL.PANOPTIC_FPN.COMBINE"
FLAGS = ("png", "rle")
# Every mode the demo's reader turns into RGB without guessing (16-bit, float, palette, CMYK...).
SUPPORTED_MODES = frozenset({
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
    "I", "F", "I;16", "I;16L", "I;16B", "I;16N",
})


@dataclass(frozen=True)
class ServeSettings:
    """What an operator tunes (tools/serve.py flags); the same for the app and Ray."""

    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_pixels: int = 4096 * 4096
    max_bytes: int = 32 * 1024 * 1024
    drain_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_pixels", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"--max-wait-ms must be >= 0, got {self.max_wait_ms}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BadInput(ValueError):
    """A request the server refuses: `status` (4xx) and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Job:
    """One image's work: the decoded image and what its answer holds."""

    image: np.ndarray  # H x W x 3 uint8, BGR (what the demo's predictor takes)
    merge: tuple[tuple[str, Any], ...] = ()  # per-request MODEL.PANOPTIC_FPN.COMBINE overrides
    png: bool = False
    rle: bool = False


def decode_image(data: bytes, max_pixels: int, input_format: str = "BGR") -> np.ndarray:
    """An upload's pixels exactly as tools/demo.py reads the same file, or BadInput saying
    what is wrong with it (checked in this order: empty, not an image, too large, mode,
    corrupt or truncated)."""
    if not data:
        raise BadInput(400, "empty body: send an image as the multipart field 'file' or as the "
                            "raw request body")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadInput(413, f"image too large: {e}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise BadInput(400, "not an image: the data is in no format Pillow reads (send JPEG, "
                            f"PNG, BMP, TIFF or WebP); {len(data)} bytes starting "
                            f"{data[:8]!r}") from e
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise BadInput(413, f"image is {w}x{h} = {w * h} pixels, over the limit of "
                                f"{max_pixels} (--max-pixels); send a smaller image")
        if img.mode not in SUPPORTED_MODES:
            raise BadInput(415, f"unsupported image mode {img.mode!r} ({img.format}); supported: "
                                f"{', '.join(sorted(SUPPORTED_MODES))}")
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadInput(400, f"corrupt or truncated {img.format} image ({w}x{h}): {e}") from e
        return np.ascontiguousarray(image_array(img, input_format))


def _parse_value(name: str, text: str, default: Any) -> Any:
    """`text` as the type of the config key's default, or BadInput."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("1", "0", "true", "false"):
                raise ValueError(text)
            return text.lower() in ("1", "true")
        if isinstance(default, int):
            return int(text)
        return float(text)
    except ValueError:
        kind = "true/false" if isinstance(default, bool) else type(default).__name__
        raise BadInput(400, f"parameter {name}={text!r}: expected {kind}") from None


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _palette(i: int) -> list[int]:
    """A stable colour for a class whose metadata has none."""
    h = hashlib.sha256(str(i).encode()).digest()
    return [64 + h[0] % 192, 64 + h[1] % 192, 64 + h[2] % 192]


class PanopticService:
    """A loaded, warmed model that answers batches of :class:`Job` (thread-safe: one batch at a
    time; everything else is read-only)."""

    def __init__(self, cfg: CfgNode, settings: ServeSettings | None = None):
        self.cfg = cfg
        self.settings = settings or ServeSettings()
        self.demo = PanopticDemo(cfg)
        self.model = self.demo.predictor.model
        self.merge_defaults = {k.lower(): v for k, v in cfg.MODEL.PANOPTIC_FPN.COMBINE.items()
                               if k != "ENABLED"}
        self._combines: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.categories = self._categories()
        self._names = {c["id"]: c["name"] for c in self.categories}
        self.config_digest = hashlib.sha256(cfg.dump().encode()).hexdigest()

    @classmethod
    def load(cls, cfg: CfgNode, settings: ServeSettings | None = None) -> PanopticService:
        """Built and warmed: ready to serve."""
        service = cls(cfg, settings)
        service.warm_up()
        return service

    def warm_up(self) -> None:
        """One inference at the test size, so the first request pays no compilation
        (TEST.RUNTIME auto exports and compiles its graphs on its first input)."""
        t0 = time.perf_counter()
        size = int(self.cfg.INPUT.MIN_SIZE_TEST) or 512
        rng = np.random.default_rng(0)
        self.run_batch([Job(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))])
        runtime = resolve_runtime(self.cfg.TEST.RUNTIME, self.model.device.type)
        logger.info(f"Warmed up in {time.perf_counter() - t0:.1f} s (TEST.RUNTIME "
                    f"{self.cfg.TEST.RUNTIME}: {runtime})")

    # ---- requests ----------------------------------------------------------------------------

    def decode(self, data: bytes) -> np.ndarray:
        return decode_image(data, self.settings.max_pixels, "BGR")

    def job(self, image: np.ndarray, params: Mapping[str, str]) -> Job:
        """A job from query parameters: `png`, `rle` and the merge keys (lower case names of
        MODEL.PANOPTIC_FPN.COMBINE's keys); anything else is refused (BadInput 400)."""
        allowed = (*FLAGS, *self.merge_defaults)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise BadInput(400, f"unknown parameter(s) {', '.join(unknown)}; allowed: "
                                f"{', '.join(allowed)}")
        flags = {f: _parse_value(f, params[f], False) if f in params else False for f in FLAGS}
        merge = []
        for name, default in self.merge_defaults.items():
            if name not in params:
                continue
            value = _parse_value(name, params[name], default)
            if name.endswith("thresh") and not 0.0 <= value <= 1.0:
                raise BadInput(400, f"parameter {name}={value}: must be in [0, 1]")
            if isinstance(value, (int, float)) and value < 0:
                raise BadInput(400, f"parameter {name}={value}: must be >= 0")
            if value != default:
                merge.append((name, value))
        return Job(image, tuple(merge), **flags)

    def check_params(self, params: Mapping[str, str]) -> None:
        """Refuse bad query parameters before the body is read."""
        self.job(np.zeros((1, 1, 3), np.uint8), params)

    def run_batch(self, jobs: Sequence[Job]) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
        """(id map, COCO segments_info) per job. Jobs are run together where that gives the
        one-at-a-time result exactly: the same network input size (no extra padding) and the
        same merge settings."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            h, w = job.image.shape[:2]
            size = ResizeShortestEdge.get_output_shape(
                h, w, self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST)
            groups.setdefault((size, job.merge), []).append(i)
        out: list[Any] = [None] * len(jobs)
        with self._lock:
            for (_, merge), idx in groups.items():
                with self._merge(merge):
                    predictions = self.demo.predict_batch([jobs[i].image for i in idx])
                for i, p in zip(idx, predictions, strict=True):
                    out[i] = self.demo.coco(p)
        return out

    def answer(self, job: Job, result: tuple[np.ndarray, list[dict[str, Any]]]
               ) -> dict[str, Any]:
        """The JSON answer: the image size and COCO panoptic segments_info (with each class's
        name), plus the PNG (base64) and per-segment RLE when asked."""
        ids, segments = result
        segments = [dict(s, category_name=self._names.get(s["category_id"], "?"))
                    for s in segments]
        if job.rle:
            for s in segments:
                s["segmentation"] = _rle(ids == s["id"])
        out: dict[str, Any] = {"height": int(ids.shape[0]), "width": int(ids.shape[1]),
                               "segments_info": segments}
        if job.png:
            out["png"] = base64.b64encode(encode_panoptic_png(ids)).decode("ascii")
        if job.merge:
            out["merge"] = dict(job.merge)
        return out

    def metadata(self) -> dict[str, Any]:
        """Classes (dataset ids, names, colours), the config digest and the serving limits."""
        return {
            "dataset": self.demo.metadata.name,
            "categories": self.categories,
            "config_digest": self.config_digest,
            "weights": os.path.basename(self.cfg.MODEL.WEIGHTS),
            "runtime": resolve_runtime(self.cfg.TEST.RUNTIME, self.model.device.type),
            "merge_defaults": self.merge_defaults,
            "settings": self.settings.to_dict(),
        }

    # ---- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _merge(self, merge: tuple[tuple[str, Any], ...]) -> Iterator[None]:
        """The model's merge swapped for one with `merge`'s settings (under the batch lock:
        only the worker that runs batches reads it)."""
        if not merge:
            yield
            return
        if merge not in self._combines:
            cfg = self.cfg.clone()
            cfg.defrost()
            for name, value in merge:
                cfg.MODEL.PANOPTIC_FPN.COMBINE[name.upper()] = value
            self._combines[merge] = build_combine(cfg)
        saved = self.model.combine
        self.model.combine = self._combines[merge]
        try:
            yield
        finally:
            self.model.combine = saved

    def _categories(self) -> list[dict[str, Any]]:
        meta = self.demo.metadata
        things, stuff = contiguous_to_dataset_ids(meta)
        colors: dict[int, list[int]] = {}
        for table, key in ((stuff, "stuff_colors"), (things, "thing_colors")):
            listed = getattr(meta, key, None) or []
            for contiguous, dataset_id in table.items():
                if contiguous < len(listed):
                    colors[dataset_id] = [int(c) for c in listed[contiguous]]
        return [dict(c, color=colors.get(c["id"], _palette(c["id"])))
                for c in dataset_categories(meta)]
