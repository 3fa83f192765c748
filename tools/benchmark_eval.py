#!/usr/bin/env python
"""Time our evaluator set (PQ, box/mask AP, mIoU) against Detectron2's on the same predictions.

    python tools/benchmark_eval.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        MODEL.WEIGHTS /tmp/run/model_final.pth
    python tools/benchmark_eval.py --config-file C --dataset coco_2017_val_panoptic_separated

Runs the model once over the dataset (default: DATASETS.TEST[0]), then times both sets on its
outputs and checks every number Detectron2 reports. The last line reads
``evaluator set: ours X.XXs Detectron2 Y.YYs ratio R.R same numbers`` (or ``differ: ...``).
The logic lives in ``benchmarks/eval_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# benchmarks/ is not installed: import it from the checkout this script sits in
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.eval_speed import run_eval_benchmark
from panoptic_ext.cli import parse_args_and_overrides
from panoptic_ext.engine.defaults import setup_cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s --config-file FILE [--dataset NAME] "
        "[options] [KEY VALUE ...]")
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="registered dataset to evaluate (default: DATASETS.TEST[0])")
    parser.add_argument("--repeat", type=int, default=1,
                        help="time both sets N times, alternating; report the fastest of each")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the report (times, metrics, differences) as JSON")
    args, opts = parse_args_and_overrides(parser, argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    cfg = setup_cfg(args.config_file, opts, eval_only=True)
    if args.dataset is None and not cfg.DATASETS.TEST:
        parser.error("DATASETS.TEST is empty; name the dataset with --dataset")
    if args.dataset is not None:
        from panoptic_ext.data.validate import check_dataset_names

        check_dataset_names({"DATASET": args.dataset}, keys=("DATASET",))
    report = run_eval_benchmark(cfg, args.dataset, repeat=args.repeat,
                                progress=sys.stderr.isatty(),
                                log=lambda line: print(line, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if not report["differ"] else 1


if __name__ == "__main__":
    sys.exit(main())
