#!/usr/bin/env python
"""Run an exported panoptic_ext model: needs torch, torchvision, numpy and Pillow only.

    python run_exported.py IMAGE [IMAGE ...] --output OUT [--model-dir DIR]

Each image is read and resized as Detectron2's DefaultPredictor does (EXIF orientation,
shortest edge to the exported MIN_SIZE_TEST, longest at most MAX_SIZE_TEST, bilinear), then
the traced model returns the panoptic map at the image's own size. Writes OUT/panoptic/<stem>.png
(COCO panoptic: id = R + 256 G + 256^2 B) and OUT/predictions.json (COCO panoptic segments
with dataset category ids, area, bbox; things also carry their score).

torchvision is imported only to register the nms / roi_align operators the traced graph calls.
Copied from panoptic_ext/apps/run_exported_template.py by tools/export_model.py.
"""

import argparse
import json
import os
import sys
import warnings

import numpy as np
import torch
import torchvision  # noqa: F401  (registers torchvision::nms and torchvision::roi_align)
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
# the traced anchor generator calls meshgrid without `indexing` (same result, a warning per run)
warnings.filterwarnings("ignore", message="torch.meshgrid")


def to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit image of any PIL mode without clipping (PIL's convert saturates 16/32-bit):
    16-bit (I;16*) scaled by the dtype's range (v * 255 / 65535); I and F by the image's own
    min..max unless already within 0..255. Same rule as panoptic_ext.apps.demo.to_8bit."""
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
        img = to_8bit(ImageOps.exif_transpose(img)).convert("RGB")
        array = np.asarray(img)
    return array[:, :, ::-1] if input_format == "BGR" else array


def resized_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Shortest edge to `short`, longest edge at most `max_size`, rounded to nearest."""
    scale = short * 1.0 / min(h, w)
    new_h, new_w = (short * 1.0, scale * w) if h < w else (scale * h, short * 1.0)
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def preprocess(image: np.ndarray, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H', W') float32 network input and the [H, W] output size."""
    h, w = image.shape[:2]
    if info["min_size_test"] > 0:
        new_h, new_w = resized_size(h, w, info["min_size_test"], info["max_size_test"])
        pil = Image.fromarray(np.ascontiguousarray(image))
        image = np.asarray(pil.resize((new_w, new_h), Image.BILINEAR))
    chw = np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1))
    return torch.from_numpy(chw), torch.tensor([h, w], dtype=torch.int64)


def to_coco(outputs, info: dict) -> tuple[np.ndarray, list]:
    """COCO panoptic RGB array and segments_info (dataset ids); empty segments left out."""
    panoptic, ids, cats, isthing, scores, _, areas = (t.numpy() for t in outputs)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--output", required=True, help="folder for panoptic/*.png, predictions.json")
    p.add_argument("--model-dir", default=HERE, help="folder of model.ts and export_info.json")
    args = p.parse_args(argv)

    with open(os.path.join(args.model_dir, "export_info.json")) as f:
        info = json.load(f)
    model = torch.jit.load(os.path.join(args.model_dir, "model.ts"), map_location="cpu").eval()
    os.makedirs(os.path.join(args.output, "panoptic"), exist_ok=True)
    annotations, failed = [], 0
    for path in args.images:
        try:
            image = read_image(path, info["input_format"])
        except Exception as e:  # unreadable: report, keep going
            print(f"ERROR: cannot read image {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        tensor, out_size = preprocess(image, info)
        with torch.no_grad():
            outputs = model(tensor, out_size)
        rgb, segments = to_coco(outputs, info)
        stem = os.path.splitext(os.path.basename(path))[0]
        Image.fromarray(rgb).save(os.path.join(args.output, "panoptic", stem + ".png"))
        annotations.append({"image_id": stem, "file_name": stem + ".png",
                            "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
                            "segments_info": segments})
    categories = [{"id": c["id"], "name": c["name"], "isthing": 1} for c in info["things"]]
    thing_ids = {c["id"] for c in info["things"]}
    categories += [{"id": c["id"], "name": c["name"], "isthing": 0} for c in info["stuff"]
                   if c["id"] not in thing_ids and not (c["contiguous_id"] == 0 and c["id"] == 0)]
    with open(os.path.join(args.output, "predictions.json"), "w") as f:
        json.dump({"annotations": annotations, "categories": categories}, f)
    print(f"wrote {len(annotations)} panoptic result(s) to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
