#!/usr/bin/env python
"""Export a trained model to TorchScript or ONNX, with a runner that needs no Detectron2.

    python tools/export_model.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        --output exported/ [--format torchscript|onnx] MODEL.WEIGHTS output/demo/model_final.pth
    python exported/run_exported.py image.jpg --output results/

TorchScript (default) writes OUTPUT/model.ts (traced); its runner needs torch and torchvision.
ONNX writes OUTPUT/dense.onnx, box_head.onnx, mask_head.onnx; its runner needs onnxruntime,
numpy and Pillow only (proposals, NMS, pasting and the merge in numpy, numpy_pipeline.py).
OpenVINO is the ONNX export plus OpenVINO IR (.xml/.bin) of the graphs, run by openvino.
Both write OUTPUT/export_info.json (resize, categories, merge thresholds) and
OUTPUT/run_exported.py (+ the modules it imports), then check the exported panoptic output
against the eager model on the sample image (default: the first image of DATASETS.TEST[0]);
exit 1 if TorchScript differs at all, or ONNX on more than 0.1% of the pixels.
The logic lives in ``panoptic_ext.deploy.export``.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from panoptic_ext.cli import parse_args_and_overrides
from panoptic_ext.deploy.export import export_onnx, export_torchscript
from panoptic_ext.engine import setup_cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --config-file FILE --output DIR [--format F] [--sample-image IMG] "
              "[KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the export")
    parser.add_argument("--sample-image", metavar="IMG", help="image to trace and check with")
    parser.add_argument("--format", choices=("torchscript", "onnx", "openvino"),
                        default="torchscript",
                        help="torchscript (runner needs torch), onnx (runner needs onnxruntime, "
                             "numpy, Pillow) or openvino (the ONNX export plus OpenVINO IR; "
                             "runner needs openvino, numpy, Pillow)")
    args, opts = parse_args_and_overrides(parser, argv)
    setup_logger(name="panoptic_ext")
    cfg = setup_cfg(args.config_file, opts, eval_only=True)
    graphs = args.format in ("onnx", "openvino")
    try:
        if graphs:
            report = export_onnx(cfg, args.output, sample_image=args.sample_image,
                                 openvino=args.format == "openvino")
        else:
            report = export_torchscript(cfg, args.output, sample_image=args.sample_image)
    except (OSError, ValueError) as e:  # named: --output, --sample-image, a file written
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    what = {"onnx": "dense.onnx, box_head.onnx, mask_head.onnx",
            "openvino": "dense/box_head/mask_head .onnx and .xml/.bin",
            "torchscript": "model.ts"}[args.format]
    print(f"Exported to {report.output_dir}: {what}, export_info.json, run_exported.py")
    name = args.format if graphs else "traced"
    print(f"Check on {report.sample_image} (input {report.input_size[0]}x{report.input_size[1]}, "
          f"{report.num_detections} detections, {report.num_segments} segments): {name} == eager: "
          f"{report.identical} (pixel agreement {100 * report.pixel_agreement:.4f}%)")
    if graphs:
        return 0 if report.pixel_agreement >= 0.999 else 1
    return 0 if report.identical else 1


if __name__ == "__main__":
    sys.exit(main())
