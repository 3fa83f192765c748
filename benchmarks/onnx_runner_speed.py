"""The exported ONNX pipeline (the torch-free runner's code) against the eager model on one
image: pixel agreement of the panoptic maps and warm per-image seconds, alternating.

Random weights are tamed as in ``model_speed.py`` so that ~100 detections reach the merge.

    python benchmarks/onnx_runner_speed.py IMG.jpg [--config-file C] [--repeat 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.model_speed import build_models  # noqa: E402
from panoptic_ext.apps import export, exported_io, onnx_pipeline  # noqa: E402
from panoptic_ext.engine import setup_cfg  # noqa: E402

COCO = "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--config-file", default=COCO)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
                                       "TEST.DETECTIONS_PER_IMAGE", "100"])
    model, _, source = build_models(cfg)
    img = exported_io.read_image(args.image, "BGR")
    chw = torch.from_numpy(exported_io.preprocess_array(
        img, {"min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST}))
    size = (int(img.shape[0]), int(img.shape[1]))
    with tempfile.TemporaryDirectory() as out:
        has_mask, res = export._write_onnx_graphs(model, chw, out)
        info = {"combine": {
            "OVERLAP_THRESH": float(model.combine.overlap_thresh),
            "STUFF_AREA_LIMIT": float(model.combine.stuff_area_thresh),
            "INSTANCES_CONFIDENCE_THRESH": float(model.combine.score_thresh)},
            "onnx": export._onnx_spec(model, has_mask, res)}
        runner = onnx_pipeline.OnnxPanoptic(out, info, threads=args.threads)
        _, agreement, segments = export.compare_onnx_with_eager(model, runner, chw,
                                                                torch.tensor(size))
        eager, onnx = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            with torch.no_grad():
                model([{"image": chw, "height": size[0], "width": size[1]}])
            eager.append(time.perf_counter() - start)
            start = time.perf_counter()
            runner(chw.numpy(), size)
            onnx.append(time.perf_counter() - start)
    print(f"weights: {source}; input {tuple(chw.shape)} from {args.image}; {segments} segments")
    print(f"pixels equal to the eager model: {100 * agreement:.5f}%")
    print("eager s: " + " ".join(f"{t:.2f}" for t in eager))
    print("onnx runner s: " + " ".join(f"{t:.2f}" for t in onnx))
    print(f"warm median (runs 2..): eager {sorted(eager[1:])[len(eager[1:]) // 2]:.2f} s, "
          f"onnx runner {sorted(onnx[1:])[len(onnx[1:]) // 2]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
