#!/usr/bin/env python
"""Draw a dataset's ground truth with its names and colours, to check the annotations (stuff /
thing split, ids, colours) or what the model is trained on.

    python tools/visualize_data.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        --source annotation --output vis/ --num 10
    python tools/visualize_data.py --config-file C --source dataloader --output vis/
    python tools/visualize_data.py --config-file C --dataset mine:IMAGES:PANOPTIC.json:PNGS \
        --dataset-name mine --source annotation --output vis/     # your own folder

annotation: the panoptic ground truth of DATASETS.TRAIN[0] (or --dataset-name) at each image's
size, one PNG per image named after it. dataloader: the first --num training samples after
augmentation, the instance targets and the stuff map side by side. The logic lives in
``panoptic_ext.apps.visualize``.
"""

import argparse
import sys

from detectron2.utils.logger import setup_logger

from panoptic_ext.apps.visualize import SOURCES, visualize_dataset
from panoptic_ext.cli import parse_args_and_overrides
from panoptic_ext.data.custom import FOLDER_SPEC
from panoptic_ext.engine import setup_cfg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --config-file FILE --source {annotation,dataloader} --output DIR "
              "[--dataset SPEC] [--dataset-name NAME] [--num N] [KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--dataset", action="append", default=[], metavar=FOLDER_SPEC,
                        help="register your COCO-panoptic folder (repeatable), as train_net.py")
    parser.add_argument("--dataset-name", metavar="NAME",
                        help="registered dataset to draw (annotation; default DATASETS.TRAIN[0])")
    parser.add_argument("--num", type=int, metavar="N",
                        help="at most N images (default: all annotations, 8 samples)")
    args, opts = parse_args_and_overrides(parser, argv)
    if args.num is not None and args.num < 1:
        parser.error("--num must be >= 1")
    setup_logger(name="panoptic_ext")
    cfg = setup_cfg(args.config_file, opts, datasets=args.dataset)
    try:
        written = visualize_dataset(cfg, args.source, args.output, args.dataset_name, args.num)
    except OSError as e:  # --output: not a folder, not writable, or replacing an input
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {len(written)} pictures to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
