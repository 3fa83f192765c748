"""The COCO panoptic format, in one place: segment ids <-> RGB, PNG reading and writing, the
JSON, and the checks every reader shares.

A COCO panoptic annotation is a JSON (``images``, ``annotations`` with ``segments_info``,
``categories``) plus one RGB PNG per image whose pixels encode a segment id as
``R + 256 G + 256^2 B`` (0 = void). Data preparation, validation, evaluation, the demo and
export all read or write it; they all go through these functions, so a file that one of them
accepts, the others read the same way, and errors name the file the same way.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .utils.io import atomic_write

__all__ = [
    "OFFSET",
    "VOID",
    "PanopticFormatError",
    "check_unique_ids",
    "describe_segment_mismatch",
    "encode_panoptic_png",
    "id_to_rgb",
    "load_panoptic_json",
    "read_panoptic_png",
    "rgb_to_id",
    "segment_mismatch",
    "write_panoptic_png",
]

OFFSET = 256 * 256 * 256  # ids are 24 bit: R + 256 G + 256^2 B
VOID = 0  # the segment id of unlabeled pixels

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB, _RGBA = 2, 6  # PNG IHDR colour types


class PanopticFormatError(KeyError, ValueError):
    """Malformed panoptic annotations or predictions; the message names the file.

    A ``KeyError`` like panopticapi's errors (code written against ``pq_compute`` keeps
    catching it) and a ``ValueError`` by nature (so does code that catches bad values).
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, >=3) RGB array -> (H, W) uint32 segment ids; an alpha channel is ignored."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    c = rgb.astype(np.uint32, copy=False)
    return c[..., 0] + (c[..., 1] << np.uint32(8)) + (c[..., 2] << np.uint32(16))


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids in [0, 2^24) -> (H, W, 3) uint8 RGB, as the PNGs store them."""
    ids = np.asarray(ids)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= OFFSET):
        raise ValueError(f"panoptic segment ids must be in [0, 2^24), got {ids.min()}..{ids.max()}")
    u = ids.astype(np.uint32, copy=False)
    return np.stack([u & 255, (u >> 8) & 255, (u >> 16) & 255], axis=-1).astype(np.uint8)


def encode_panoptic_png(ids: np.ndarray) -> bytes:
    """PNG bytes of an id map (lossless; OpenCV's encoder is several times faster than PIL's)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(id_to_rgb(ids)[..., ::-1]))
    if not ok:
        raise OSError("OpenCV could not encode the panoptic PNG")
    return buf.tobytes()


def write_panoptic_png(path: str, ids: np.ndarray) -> None:
    """Write an id map as a COCO panoptic PNG; a reader never sees half a file."""
    atomic_write(path, encode_panoptic_png(ids))


def _is_8bit_rgb_png(head: bytes, allow_alpha: bool) -> bool:
    return (
        len(head) >= 26
        and head[:8] == _PNG_SIGNATURE
        and head[12:16] == b"IHDR"
        and head[24] == 8
        and (head[25] == _RGB or (allow_alpha and head[25] == _RGBA))
    )


def _where(path: str, image_id: Any) -> str:
    return f"In the image with ID {image_id} the PNG {path}" if image_id is not None else (
        f"The PNG {path}")


def read_panoptic_png(path: str, image_id: Any = None, *, allow_alpha: bool = True
                      ) -> np.ndarray:
    """Decode a panoptic PNG to an (H, W) uint32 id map, as panopticapi reads it.

    8-bit RGB(A) PNGs go through OpenCV (faster, releases the GIL), anything else through
    Pillow like panopticapi. ``allow_alpha=False`` refuses RGBA files (what Detectron2's
    loaders and the derived stuff maps expect); errors name the file and the image.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{_where(path, image_id)} does not exist.") from None
    except IsADirectoryError:
        raise PanopticFormatError(f"{_where(path, image_id)} is a folder, not a PNG.") from None
    if _is_8bit_rgb_png(data[:32], allow_alpha):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if bgr is not None and bgr.dtype == np.uint8 and bgr.ndim == 3:
            code = cv2.COLOR_BGR2RGBA if bgr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA
            rgba = cv2.cvtColor(bgr, code)
            if sys.byteorder == "little":
                ids = rgba.view(np.uint32)[..., 0]
                ids &= np.uint32(0xFFFFFF)  # drop alpha: panopticapi ignores it
                return ids
            return rgb_to_id(rgba)
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im, dtype=np.uint32)
    except Exception as e:  # noqa: BLE001 - PIL raises many unrelated types; re-raised
        raise PanopticFormatError(
            f"{_where(path, image_id)} cannot be read: {e}; the file is corrupt or not a PNG, "
            "re-export it"
        ) from e
    if arr.ndim != 3 or arr.shape[2] < 3 or (not allow_alpha and mode != "RGB"):
        raise PanopticFormatError(
            f"{_where(path, image_id)} is not an RGB image (mode {mode}, array shape "
            f"{arr.shape}); COCO panoptic PNGs encode ids as R + 256*G + 256^2*B, re-export it "
            "as RGB."
        )
    return rgb_to_id(arr)


def load_panoptic_json(path: str, keys: Iterable[str] = ("annotations", "categories")
                       ) -> dict[str, Any]:
    """Read a COCO panoptic JSON; a missing, malformed or foreign file is named in the error."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"panoptic JSON {path} does not exist") from None
    except IsADirectoryError:
        raise PanopticFormatError(
            f"{path} is a folder; the panoptic JSON is the file (e.g. panoptic_val2017.json)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PanopticFormatError(f"{path}: not valid JSON ({exc}); re-export it") from exc
    if not isinstance(data, dict):
        raise PanopticFormatError(f"{path}: top level is not an object; not a COCO panoptic JSON")
    for key in keys:
        if key not in data:
            raise PanopticFormatError(f"{path}: missing '{key}'; is it a COCO panoptic JSON?")
    return data


def check_unique_ids(annotations: Iterable[Any], path: str, limit: int = 5) -> None:
    """Refuse an image id listed twice, or a segment id listed twice in one image, naming
    them: a repeated image would be scored twice, a repeated segment silently replaced."""
    images: dict[Any, Any] = {}
    problems = []
    for ann in annotations:
        if not isinstance(ann, Mapping):
            continue
        image_id = ann.get("image_id")
        key = repr(image_id)  # any JSON value, lists included
        if key in images:
            problems.append(f"image id {image_id!r} is listed twice ({images[key]} and "
                            f"{ann.get('file_name')})")
        images[key] = ann.get("file_name")
        segments = ann.get("segments_info")
        counts = Counter(repr(s.get("id")) for s in segments or [] if isinstance(s, Mapping))
        twice = sorted(k for k, n in counts.items() if n > 1)
        if twice:
            problems.append(f"image {image_id!r} lists segment id(s) {', '.join(twice)} twice")
    if problems:
        more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
        raise PanopticFormatError(
            f"{path}: {'; '.join(problems[:limit])}{more}. List each image once and each "
            "segment once per image (a repeat would be counted twice or hide the first)")


def segment_mismatch(present: Iterable[int], listed: Iterable[int]
                     ) -> tuple[list[int], list[int]]:
    """(ids the JSON lists that have no pixel, ids painted in the PNG the JSON does not list),
    both sorted; void (0) is neither."""
    present, listed = {int(v) for v in present}, {int(v) for v in listed}
    return sorted(listed - present - {VOID}), sorted(present - listed - {VOID})


def describe_segment_mismatch(missing: Iterable[int], extra: Iterable[int], json_name: str,
                              names: Mapping[int, str] | None = None, limit: int = 10
                              ) -> list[str]:
    """The messages for :func:`segment_mismatch`'s result, with what to do about each."""
    missing, extra = list(missing), list(extra)
    problems = []
    if missing:
        shown = ", ".join(
            f"{s} ('{names[s]}')" if names and s in names else str(s) for s in missing[:limit])
        more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
        problems.append(
            f"segment id(s) {shown}{more} listed in {json_name} have no pixels in the PNG; "
            "remove them from the image's segments_info or re-export the PNG")
    if extra:
        more = f" and {len(extra) - limit} more" if len(extra) > limit else ""
        problems.append(
            f"segment id(s) {extra[:limit]}{more} are in the PNG but not in {json_name}'s "
            "segments_info for this image; list them with their category or paint them 0 "
            "(void)")
    return problems
