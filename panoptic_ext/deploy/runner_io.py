"""Image reading, resizing and result writing shared by the exported runners (TorchScript and
ONNX): numpy and Pillow only, no torch, no Detectron2.

tools/export_model.py copies this file next to the exported model, where ``run_exported.py``
imports it; inside the package it is ``panoptic_ext.deploy.runner_io``. What it writes follows
tools/demo.py: OUT/panoptic/<stem>.png (COCO panoptic, id = R + 256 G + 256^2 B), a picture per
image, and OUT/predictions.json (segments with the dataset's category ids, area, bbox).
The output checks, lock and atomic writes are panoptic_ext.utils', copied next to the runner as
``panoptic_utils/`` (standard library only).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps

try:  # inside the package
    from ..utils.io import atomic_write_json, naming_path
    from ..utils.locks import RunLockedError, run_lock
    from ..utils.paths import prepare_output_dir, refuse_replacing_inputs
except ImportError:  # imported as a top-level module: by a runner
    try:  # copied next to run_exported.py, with panoptic_utils/
        from panoptic_utils.io import atomic_write_json, naming_path
        from panoptic_utils.locks import RunLockedError, run_lock
        from panoptic_utils.paths import prepare_output_dir, refuse_replacing_inputs
    except ImportError:  # a template run from the source tree, where the package is
        from panoptic_ext.utils.io import atomic_write_json, naming_path
        from panoptic_ext.utils.locks import RunLockedError, run_lock
        from panoptic_ext.utils.paths import prepare_output_dir, refuse_replacing_inputs

__all__ = [
    "categories",
    "image_array",
    "output_run",
    "picture",
    "picture_name",
    "preprocess_array",
    "read_export_info",
    "read_image",
    "resized_size",
    "run_files",
    "save_image",
    "to_8bit",
    "to_coco",
]


def to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit image of any PIL mode without clipping (PIL's convert saturates 16/32-bit):
    16-bit (I;16*) scaled by the dtype's range (v * 255 / 65535); I and F by the image's own
    min..max unless already within 0..255. The demo uses this same rule."""
    if img.mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float64) * (255.0 / 65535.0)
    elif img.mode in ("I", "F"):
        a = np.nan_to_num(np.asarray(img).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    else:
        return img
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")


def read_image(path: str, input_format: str) -> np.ndarray:
    """HxWx3 uint8 in the model's channel order, upright per EXIF, every PIL mode (16-bit,
    palette, LA, I, F) converted by to_8bit, then to RGB."""
    with Image.open(path) as img:
        return image_array(img, input_format)


def image_array(img: Image.Image, input_format: str) -> np.ndarray:
    """:func:`read_image` of an opened image (the server decodes uploads with it)."""
    array = np.asarray(to_8bit(ImageOps.exif_transpose(img)).convert("RGB"))
    return array[:, :, ::-1] if input_format == "BGR" else array


def read_export_info(path: str) -> dict:
    """export_info.json; missing or malformed is an error naming it."""
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: --model-dir must be the export's "
                                "folder") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}): re-export the model") from e
    if not isinstance(info, dict):
        raise ValueError(f"{path} is not an export_info.json: re-export the model")
    return info


def resized_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Shortest edge to `short`, longest edge at most `max_size`, rounded to nearest
    (Detectron2's ResizeShortestEdge)."""
    scale = short * 1.0 / min(h, w)
    new_h, new_w = (short * 1.0, scale * w) if h < w else (scale * h, short * 1.0)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def preprocess_array(image: np.ndarray, info: dict) -> np.ndarray:
    """(3, H', W') float32 network input, resized as DefaultPredictor does (bilinear, PIL)."""
    h, w = image.shape[:2]
    if info["min_size_test"] > 0:
        new_h, new_w = resized_size(h, w, info["min_size_test"], info["max_size_test"])
        pil = Image.fromarray(np.ascontiguousarray(image))
        image = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))
    return np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1))


def to_coco(outputs: Sequence[Any], info: dict) -> tuple[np.ndarray, list]:
    """COCO panoptic RGB array and segments_info (dataset ids) of the (panoptic map, ids, cats,
    isthing, scores, instance ids, areas) arrays; empty segments left out."""
    panoptic, ids, cats, isthing, scores, _, areas = (np.asarray(t) for t in outputs)
    things = {c["contiguous_id"]: c["id"] for c in info["things"]}
    stuff = {c["contiguous_id"]: c["id"] for c in info["stuff"]}
    segments = []
    for i in range(len(ids)):
        if areas[i] == 0:
            continue
        ys, xs = np.nonzero(panoptic == ids[i])
        x0, y0 = int(xs.min()), int(ys.min())
        table = things if isthing[i] else stuff
        if int(cats[i]) not in table:  # never write a contiguous id as if it were the dataset's
            raise KeyError(f"{'thing' if isthing[i] else 'stuff'} class {int(cats[i])} is not in "
                           "export_info.json; re-export the model with its dataset's metadata")
        seg = {
            "id": int(ids[i]),
            "category_id": int(table[int(cats[i])]),
            "isthing": bool(isthing[i]),
            "iscrowd": 0,
            "area": int(areas[i]),
            "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        }
        if isthing[i]:
            seg["score"] = float(scores[i])
        segments.append(seg)
    ids_u = panoptic.astype(np.uint32)
    rgb = np.stack([ids_u % 256, (ids_u // 256) % 256, (ids_u // 65536) % 256], axis=-1)
    return rgb.astype(np.uint8), segments


def categories(info: dict) -> list[dict]:
    """The dataset's categories (COCO panoptic form) from export_info.json."""
    out = [{"id": c["id"], "name": c["name"], "isthing": 1} for c in info["things"]]
    thing_ids = {c["id"] for c in info["things"]}
    out += [{"id": c["id"], "name": c["name"], "isthing": 0} for c in info["stuff"]
            if c["id"] not in thing_ids and not (c["contiguous_id"] == 0 and c["id"] == 0)]
    return out


def _color(category_id: int, isthing: bool) -> np.ndarray:
    """A fixed colour per category (things and stuff apart), the same in every picture."""
    rng = np.random.default_rng(category_id * 2 + int(isthing))
    return rng.integers(40, 256, 3).astype(np.float32)


def picture(image_rgb: np.ndarray, panoptic: np.ndarray, segments: list[dict]) -> np.ndarray:
    """RGB picture of the result: each segment tinted with its category's colour, outlines of
    the segments in white (the demo draws with Detectron2's Visualizer, absent here)."""
    out = image_rgb.astype(np.float32).copy()
    for seg in segments:
        mask = panoptic == seg["id"]
        out[mask] = 0.5 * out[mask] + 0.5 * _color(seg["category_id"], seg["isthing"])
    edge = np.zeros(panoptic.shape, dtype=bool)
    edge[:, 1:] |= panoptic[:, 1:] != panoptic[:, :-1]
    edge[1:, :] |= panoptic[1:, :] != panoptic[:-1, :]
    out[edge] = 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def picture_name(path: str) -> str:
    """The picture's file name: the input's (formats PIL cannot write losslessly become .png),
    as tools/demo.py names it."""
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    return base if ext.lower() in (".jpg", ".jpeg", ".png", ".bmp") else stem + ".png"


def _planned_outputs(files: Sequence[str], output: str) -> list[str]:
    """The files a run writes for ``files``; two inputs that would write the same one are
    refused (one result would replace the other)."""
    owners: dict[str, str] = {}
    planned = [os.path.join(output, "predictions.json")]
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        if stem in owners:
            raise ValueError(f"inputs {owners[stem]} and {f} would write the same outputs "
                             f"({stem}.*); rename one or run them into different --output folders")
        owners[stem] = f
        planned += [os.path.join(output, "panoptic", stem + ".png"),
                    os.path.join(output, picture_name(f))]
    return planned


@contextlib.contextmanager
def output_run(files: Sequence[str], output: str) -> Iterator[None]:
    """Hold the ``output`` folder for one run over ``files`` (demo or runner): checked (a folder
    that can be written, no output replacing an input) and locked before any work, and the
    previous run's predictions.json removed, so a crash never leaves it looking current (the
    new one is written whole at the end)."""
    planned = _planned_outputs(files, output)
    prepare_output_dir(output)
    refuse_replacing_inputs(planned, files)
    with run_lock(output, what="another run writing results", option="--output"):
        stale = planned[0]
        if os.path.isfile(stale):
            with naming_path(stale):
                os.remove(stale)
            print(f"removed the previous run's {stale}", file=sys.stderr)
        with naming_path(os.path.join(output, "panoptic")):
            os.makedirs(os.path.join(output, "panoptic"), exist_ok=True)
        yield


def save_image(array: np.ndarray, path: str) -> None:
    """Save a picture or PNG result, a failure naming ``path``."""
    with naming_path(path):
        Image.fromarray(array).save(path)


def run_files(
    files: Sequence[str],
    output: str,
    info: dict,
    predict: Callable[[np.ndarray], Sequence[Any]],
) -> int:
    """Run `predict` (network input (3, H', W') float32 and the [H, W] output size -> the
    (panoptic, ids, cats, isthing, scores, instance ids, areas) arrays) on each image and write
    the results into `output`. Unreadable images are named on stderr and skipped; returns 1
    if any was, else 0. A bad output folder, or one in use, is named on stderr (returns 1)."""
    try:
        with output_run(files, output):
            return _run_files(files, output, info, predict)
    except (OSError, ValueError, RunLockedError) as e:  # the output folder, or a write into it
        print(f"ERROR: {e}", file=sys.stderr)
        return 1


def _run_files(files: Sequence[str], output: str, info: dict,
               predict: Callable[[np.ndarray], Sequence[Any]]) -> int:
    annotations, failed = [], 0
    for n, path in enumerate(files):
        try:
            image = read_image(path, info["input_format"])
        except Exception as e:  # unreadable: report, keep going
            print(f"ERROR: cannot read image {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        h, w = image.shape[:2]
        outputs = [np.asarray(t) for t in predict(preprocess_array(image, info), (h, w))]
        rgb, segments = to_coco(outputs, info)
        stem = os.path.splitext(os.path.basename(path))[0]
        save_image(rgb, os.path.join(output, "panoptic", stem + ".png"))
        shown = image[:, :, ::-1] if info["input_format"] == "BGR" else image
        save_image(picture(shown, outputs[0], segments), os.path.join(output, picture_name(path)))
        annotations.append({"image_id": stem, "file_name": stem + ".png",
                            "image_file": os.path.abspath(path),
                            "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                            "segments_info": segments})
        print(f"[{n + 1}/{len(files)}] {path}: {len(segments)} segments", file=sys.stderr)
    atomic_write_json(os.path.join(output, "predictions.json"),
                      {"annotations": annotations, "categories": categories(info)})
    print(f"wrote {len(annotations)} panoptic result(s) to {output}")
    return 1 if failed else 0
