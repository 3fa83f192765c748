#!/usr/bin/env python
"""Run an exported panoptic_ext model (TorchScript): needs torch, torchvision, numpy and Pillow.

    python run_exported.py IMAGE [IMAGE ...] --output OUT [--model-dir DIR]

Each image is read and resized as Detectron2's DefaultPredictor does (EXIF orientation,
shortest edge to the exported MIN_SIZE_TEST, longest at most MAX_SIZE_TEST, bilinear), then
the traced model returns the panoptic map at the image's own size. Writes OUT/panoptic/<stem>.png
(COCO panoptic: id = R + 256 G + 256^2 B), a picture per image, and OUT/predictions.json (COCO
panoptic segments with dataset category ids, area, bbox; things also carry their score).
Unreadable images are named and skipped (exit code 1).

torchvision is imported only to register the nms / roi_align operators the traced graph calls.
Reading and writing are in runner_io.py, next to this file (shared with the ONNX runner).
Copied from panoptic_ext/deploy/run_exported_template.py by tools/export_model.py.
"""

import argparse
import os
import sys
import warnings

import torch
import torchvision  # noqa: F401  (registers torchvision::nms and torchvision::roi_align)

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from runner_io import (  # noqa: E402
    preprocess_array,
    read_export_info,
    read_image,
    resized_size,
    run_files,
    to_8bit,
    to_coco,
)

__all__ = ["main", "read_image", "resized_size", "to_8bit", "to_coco"]

# the traced anchor generator calls meshgrid without `indexing` (same result, a warning per run)
warnings.filterwarnings("ignore", message="torch.meshgrid")


def preprocess(image, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H', W') float32 network input and the [H, W] output size."""
    h, w = image.shape[:2]
    return (torch.from_numpy(preprocess_array(image, info)),
            torch.tensor([h, w], dtype=torch.int64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--output", required=True, help="folder for panoptic/*.png, predictions.json")
    p.add_argument("--model-dir", default=HERE, help="folder of model.ts and export_info.json")
    args = p.parse_args(argv)

    model_path = os.path.join(args.model_dir, "model.ts")
    try:
        info = read_export_info(os.path.join(args.model_dir, "export_info.json"))
        try:
            model = torch.jit.load(model_path, map_location="cpu").eval()
        except (OSError, RuntimeError) as e:  # missing, truncated, not TorchScript
            raise ValueError(f"{model_path} cannot be loaded ({e}); re-export the model "
                             "(tools/export_model.py)") from e
    except (OSError, ValueError) as e:  # a missing or damaged file of the export, named
        print(f"ERROR: {e}", file=sys.stderr)
        return 1

    def predict(chw, out_size):
        with torch.no_grad():
            outputs = model(torch.from_numpy(chw), torch.tensor(out_size, dtype=torch.int64))
        return [t.numpy() for t in outputs]

    return run_files(args.images, args.output, info, predict)


if __name__ == "__main__":
    sys.exit(main())
