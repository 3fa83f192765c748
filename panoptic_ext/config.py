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
    # Convolutions in channels_last, at inference and in training (training: where oneDNN runs
    # AVX-512, NCHW on AVX2-only CPUs, whose channels_last backward is slower): faster on CPU,
    # low bits differ (off = exact).
    cfg.MODEL.PANOPTIC_EXT.CHANNELS_LAST = True
    # Fold frozen/eval batch norms into the preceding convs at inference, and the backbone's
    # frozen ones in training: faster, low bits differ (off = exact).
    cfg.MODEL.PANOPTIC_EXT.FUSE_NORM = True
    # CPU threads for the fast path's post-processing (0 = torch's setting); same results.
    cfg.MODEL.PANOPTIC_EXT.POSTPROCESS_THREADS = 1
    # What inference returns per image: any of "instances", "sem_seg", "panoptic_seg".
    cfg.MODEL.PANOPTIC_EXT.INFERENCE_OUTPUTS = ["instances", "sem_seg", "panoptic_seg"]
    # Unpickle MODEL.WEIGHTS (and resumed checkpoints) in full: runs any code the file holds;
    # only for files you trust (default: tensors, numpy arrays and containers only).
    cfg.MODEL.PANOPTIC_EXT.TRUST_WEIGHTS_FILE = False
    # How the task losses combine: "fixed" (the weights above) or "uncertainty" (learned
    # log-variances s: loss = sum exp(-s) * L + s, on top of the fixed weights; Kendall 2018).
    cfg.MODEL.PANOPTIC_EXT.LOSS_BALANCING = "fixed"
    # With "uncertainty": one learned weight per "task" (semantic, instance) or per loss "term".
    cfg.MODEL.PANOPTIC_EXT.LOSS_BALANCING_GROUPS = "task"
    # bf16 (SOLVER.AMP, TEST.PRECISION) also where the CPU only emulates it (no avx512_bf16 / AMX:
    # ~10x slower than fp32); False runs fp32 there instead, logged. For tests of that path.
    cfg.MODEL.PANOPTIC_EXT.EMULATED_BF16 = False
    # Inference precision of the convolutional parts: "fp32", "bf16" (CPU/CUDA), "fp16" (CUDA).
    cfg.TEST.PRECISION = "fp32"
    # Who runs the dense parts at inference: "torch", "openvino", "onnxruntime" (ONNX graphs
    # exported from the loaded weights, CPU only) or "auto" (OpenVINO, else ONNX Runtime, on
    # CPU, each build checked against torch on its first input; torch on other devices).
    cfg.TEST.RUNTIME = "auto"
    # Keep each evaluated dataset's COCO panoptic predictions (inference/<dataset>/predictions*).
    cfg.TEST.SAVE_PREDICTIONS = False
    # Who scores PQ: "auto" (the evaluator in memory; files: hotcoco where it gives
    # panopticapi's numbers), "hotcoco" (required; evaluator writes PNGs), "panoptic_ext".
    cfg.TEST.PQ_BACKEND = "auto"
    # Who scores box/mask AP: "auto" (hotcoco if installed), "hotcoco", "pycocotools".
    cfg.TEST.AP_BACKEND = "auto"
    # Autocast dtype when SOLVER.AMP.ENABLED: "bfloat16" (CPU or CUDA) or "float16" (CUDA).
    cfg.SOLVER.AMP.DTYPE = "bfloat16"
    # Iterations between log lines / metrics.json entries (Detectron2 hard-codes 20).
    cfg.SOLVER.LOG_PERIOD = 20
    # Schedule length in epochs (0 = MAX_ITER in iterations; > 0 needs SOLVER.MAX_ITER 0).
    cfg.SOLVER.EPOCHS = 0
    # With EPOCHS: LR decays in epochs (empty: SOLVER.STEPS as fractions of the YAML's MAX_ITER).
    cfg.SOLVER.STEPS_EPOCHS = ()
    # With EPOCHS: warmup length in epochs (0 = SOLVER.WARMUP_ITERS, in iterations, as it is).
    cfg.SOLVER.WARMUP_EPOCHS = 0.0
    # With EPOCHS: epochs between checkpoints (0 = SOLVER.CHECKPOINT_PERIOD, in iterations).
    cfg.SOLVER.CHECKPOINT_PERIOD_EPOCHS = 0
    # Written by the conversion, "N epochs = M iterations at batch B over K images"; not to set.
    cfg.SOLVER.EPOCHS_RESOLVED = ""
    # With SOLVER.EPOCHS: epochs between evaluations (0 = TEST.EVAL_PERIOD, in iterations).
    cfg.TEST.EVAL_PERIOD_EPOCHS = 0
    # A training sample that fails to load: "error" stops naming the file, "skip" logs it,
    # trains on another sample and counts it (metric data/skipped_samples).
    cfg.DATALOADER.ON_BAD_SAMPLE = "error"
    # A panoptic JSON segment area/bbox unlike its PNG pixels: "error" (validation fails), or
    # "fix" (a corrected copy of the JSON, in the validation cache, is used; logged).
    cfg.DATALOADER.ON_BAD_AREA = "error"
    # Check every file of DATASETS.TRAIN/TEST before training (panoptic_ext.data.validate).
    cfg.DATALOADER.VALIDATE = True
    # Your COCO-panoptic folders, "NAME:IMAGE_ROOT:PANOPTIC_JSON:PANOPTIC_ROOT": registers NAME and
    # NAME_separated (panoptic_ext.data.custom); heads follow their categories.
    cfg.DATASETS.PANOPTIC_FOLDERS = []
    return cfg
