#!/usr/bin/env python
"""Run an ONNX-exported panoptic_ext model: needs onnxruntime (or openvino), numpy and Pillow
only (no torch, no Detectron2).

    python run_exported.py IMAGE [IMAGE ...] --output OUT [--model-dir DIR] [--threads N]
        [--engine onnxruntime|openvino]

Each image (any size) is read and resized as Detectron2's DefaultPredictor does (EXIF
orientation, shortest edge to the exported MIN_SIZE_TEST, longest at most MAX_SIZE_TEST,
bilinear). The graphs (dense.onnx, box_head.onnx, mask_head.onnx) run in onnxruntime (or
OpenVINO: --engine, or the default of an export with --format openvino); proposal
selection, NMS, box decoding, mask pasting and the panoptic merge run in numpy
(numpy_pipeline.py). Writes OUT/panoptic/<stem>.png (COCO panoptic: id = R + 256 G + 256^2 B), a
picture per image and OUT/predictions.json (COCO panoptic segments with the dataset's category
ids, area, bbox; things also carry their score). Unreadable images are named and skipped
(exit code 1).

Copied from panoptic_ext/deploy/run_onnx_template.py by tools/export_model.py --format onnx, with
runner_io.py and numpy_pipeline.py next to it.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from numpy_pipeline import ENGINES, OnnxPanoptic  # noqa: E402
from runner_io import read_export_info, run_files  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--output", required=True, help="folder for panoptic/*.png, predictions.json")
    p.add_argument("--model-dir", default=HERE, help="folder of the .onnx files and "
                   "export_info.json")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads of the engine (0: its default, all cores)")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="who runs the graphs (default: the export's; openvino reads the .onnx "
                        "files too)")
    args = p.parse_args(argv)

    info_path = os.path.join(args.model_dir, "export_info.json")
    try:
        info = read_export_info(info_path)
        if "onnx" not in info:
            p.error(f"{info_path} is not an ONNX export (re-export with --format onnx)")
        model = OnnxPanoptic(args.model_dir, info, threads=args.threads, engine=args.engine)
    except (OSError, ValueError) as e:  # a missing or damaged file of the export, named
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return run_files(args.images, args.output, info, model)


if __name__ == "__main__":
    sys.exit(main())
