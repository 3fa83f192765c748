"""Every config key panoptic_ext adds, with its default. No other key is read by the package."""

from detectron2.config import CfgNode as CN


def add_panoptic_config(cfg: CN) -> CN:
    """Add panoptic_ext's keys to a Detectron2 config (in place); returns it for chaining.

    Keys Detectron2 already defines (MODEL.SEM_SEG_HEAD.*, MODEL.PANOPTIC_FPN.*) keep their
    meaning, so model-zoo YAMLs stay valid.
    """
    cfg.MODEL.PANOPTIC_EXT = CN()
    # Registry name of the panoptic merge strategy (see panoptic_ext/modeling/combine.py).
    cfg.MODEL.PANOPTIC_EXT.COMBINE_NAME = "HeuristicCombine"
    # Per-loss multipliers applied on top of the heads' own weights (1.0 = unchanged).
    cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS = CN()
    for name in ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask",
                 "loss_sem_seg"):
        cfg.MODEL.PANOPTIC_EXT.LOSS_WEIGHTS[name] = 1.0
    # Inference post-processing with less work for the same outputs: no full-size semantic logits
    # unless "sem_seg" is returned, masks pasted only where the panoptic merge reads them.
    cfg.MODEL.PANOPTIC_EXT.FAST_INFERENCE = True
    # Convolutions in channels_last at inference: faster on CPU, low bits differ (off = exact).
    cfg.MODEL.PANOPTIC_EXT.CHANNELS_LAST = True
    # Fold frozen/eval batch norms into the preceding convs at inference: faster, low bits differ.
    cfg.MODEL.PANOPTIC_EXT.FUSE_NORM = True
    # CPU threads for the fast path's post-processing (0 = torch's setting); same results.
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS_THREADS = 1
    # What inference returns per image: any of "instances", "sem_seg", "panoptic_seg".
    cfg.MODEL.PANOPTIC_EXT.INFERENCE_OUTPUTS = ["instances", "sem_seg", "panoptic_seg"]
    # Inference precision of the convolutional parts: "fp32", "bf16" (CPU/CUDA), "fp16" (CUDA).
    cfg.TEST.PRECISION = "fp32"
    # Keep each evaluated dataset's COCO panoptic predictions (inference/<dataset>/predictions*).
    cfg.TEST.SAVE_PREDICTIONS = False
    # Autocast dtype when SOLVER.AMP.ENABLED: "bfloat16" (CPU or CUDA) or "float16" (CUDA).
    cfg.SOLVER.AMP.DTYPE = "bfloat16"
    # Iterations between log lines / metrics.json entries (Detectron2 hard-codes 20).
    cfg.SOLVER.LOG_PERIOD = 20
    # A training sample that fails to load: "error" stops naming the file, "skip" logs it,
    # trains on another sample and counts it (metric data/skipped_samples).
    cfg.DATALOADER.ON_BAD_SAMPLE = "error"
    # Check every file of DATASETS.TRAIN/TEST before training (panoptic_ext.data.validate).
    cfg.DATALOADER.VALIDATE = True
    # Your COCO-panoptic folders, "NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT": registers NAME and
    # NAME_separated (panoptic_ext.data.custom); heads follow their categories.
    cfg.DATASETS.PANOPTIC_FOLDERS = []
    return cfg
