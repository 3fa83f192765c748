#!/usr/bin/env python
"""Train or evaluate Panoptic FPN (panoptic_ext) with Detectron2's DefaultTrainer.

    python tools/train_net.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml
    python tools/train_net.py --config-file C --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file C --resume          # continue an interrupted run
    python tools/train_net.py --config-file C --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes
    python tools/train_net.py --config-file C --dataset mine_train:IMAGES:PANOPTIC.json:PNGS \
        --dataset mine_val:... DATASETS.TRAIN "('mine_train_separated',)" \
        DATASETS.TEST "('mine_val_separated',)"        # your own COCO-panoptic folders
"""

import argparse

from detectron2.engine import default_argument_parser, launch

from panoptic_ext.apps.curves import write_training_curves
from panoptic_ext.data.custom import FOLDER_SPEC
from panoptic_ext.engine import setup
from panoptic_ext.engine.trainer import evaluate_only, train


def main(args):
    cfg = setup(args)
    if args.eval_only:
        return evaluate_only(cfg, resume=args.resume)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    write_training_curves(cfg.OUTPUT_DIR)  # OUTPUT_DIR/curves.png; a failure only warns
    return result


def get_parser() -> argparse.ArgumentParser:
    """Detectron2's parser plus --dataset (kept here: the logic is in panoptic_ext)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", action="append", default=[], metavar=FOLDER_SPEC,
        help="register your COCO-panoptic folder as NAME and NAME_separated (repeatable; "
        "same as DATASETS.PANOPTIC_FOLDERS; put it before the KEY VALUE overrides); heads "
        "follow its categories",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start a fresh run in an OUTPUT_DIR that holds an earlier run's checkpoints: "
        "deletes them and its metrics.json (without it, such a run is refused; --resume "
        "continues it instead)",
    )
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
