#!/usr/bin/env python
"""Export a trained model to TorchScript, with a runner that needs no Detectron2.

    python tools/export_model.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        --output exported/ MODEL.WEIGHTS output/demo/model_final.pth
    python exported/run_exported.py image.jpg --output results/

Writes OUTPUT/model.ts (traced), OUTPUT/export_info.json (resize, categories, merge thresholds)
and OUTPUT/run_exported.py, then checks the traced panoptic output against the eager model on
the sample image (default: the first image of DATASETS.TEST[0]); exits 1 if they differ.
The logic lives in ``panoptic_ext.apps.export``.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.export import export_torchscript
from panoptic_ext.cli import parse_args_and_overrides
from panoptic_ext.engine import setup_cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --config-file FILE --output DIR [--sample-image IMG] [KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the export")
    parser.add_argument("--sample-image", metavar="IMG", help="image to trace and check with")
    args, opts = parse_args_and_overrides(parser, argv)
    setup_logger(name="panoptic_ext")
    cfg = setup_cfg(args.config_file, opts, eval_only=True)
    report = export_torchscript(cfg, args.output, sample_image=args.sample_image)
    print(f"Exported to {report.output_dir}: model.ts, export_info.json, run_exported.py")
    print(f"Check on {report.sample_image} (input {report.input_size[0]}x{report.input_size[1]}, "
          f"{report.num_detections} detections, {report.num_segments} segments): traced == eager: "
          f"{report.identical} (pixel agreement {100 * report.pixel_agreement:.4f}%)")
    return 0 if report.identical else 1


if __name__ == "__main__":
    sys.exit(main())
