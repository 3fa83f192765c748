#!/usr/bin/env python
"""Train or evaluate Panoptic FPN (panoptic_ext) with Detectron2's DefaultTrainer.

    python tools/train_net.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml
    python tools/train_net.py --config-file C --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file C --resume          # continue an interrupted run
    python tools/train_net.py --config-file C --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes
"""

import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch

from panoptic_ext.data import check_dataset_names
from panoptic_ext.engine import Trainer, TrainingInterrupted, setup_cfg


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        check_dataset_names(cfg, ("DATASETS.TEST",))
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except TrainingInterrupted as e:
        logging.getLogger("panoptic_ext").warning(
            f"Training {e}; saved {e.checkpoint}. Rerun with --resume to continue."
        )
        return None


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
