"""The exported ONNX pipeline (the torch-free runner's code) against the eager torch model:
pixel agreement of the panoptic maps over the given images, and warm per-image seconds on the
first one, alternating.

Random weights are tamed as in ``model_speed.py`` so that ~100 detections reach the merge.

    python benchmarks/onnx_runner_speed.py IMG.jpg [--config-file C] [--repeat 4]
    python benchmarks/onnx_runner_speed.py datasets/synthetic_panoptic/val/*.jpg --repeat 0 \
        --config-file configs/Synthetic/panoptic_fpn_R_50.yaml -- MODEL.WEIGHTS model_final.pth
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
from panoptic_ext.deploy import export, numpy_pipeline, runner_io  # noqa: E402
from panoptic_ext.engine import setup_cfg  # noqa: E402

COCO = "configs/COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--config-file", default=COCO)
    parser.add_argument("--repeat", type=int, default=4, help="timed runs on the first image "
                        "(0: agreement only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.epilog = "config overrides go after '--': ... -- MODEL.WEIGHTS model.pth"
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, opts = parser.parse_args(argv[:cut]), argv[cut + 1:]
    if len(opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {opts}")
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
                                       "TEST.DETECTIONS_PER_IMAGE", "100", *opts,
                                       "TEST.RUNTIME", "torch"])  # the eager reference
    model, _, source = build_models(cfg)
    test_size = {"min_size_test": cfg.INPUT.MIN_SIZE_TEST, "max_size_test": cfg.INPUT.MAX_SIZE_TEST}
    inputs = []
    for path in args.images:
        img = runner_io.read_image(path, "BGR")
        inputs.append((path, torch.from_numpy(runner_io.preprocess_array(img, test_size)),
                       (int(img.shape[0]), int(img.shape[1]))))
    with tempfile.TemporaryDirectory() as out:
        has_mask, res = export._write_onnx_graphs(model, inputs[0][1], out)
        info = {"combine": {
            "OVERLAP_THRESH": float(model.combine.overlap_thresh),
            "STUFF_AREA_LIMIT": float(model.combine.stuff_area_thresh),
            "INSTANCES_CONFIDENCE_THRESH": float(model.combine.score_thresh)},
            "onnx": export._onnx_spec(model, has_mask, res)}
        runner = numpy_pipeline.OnnxPanoptic(out, info, threads=args.threads)
        equal = total = segments = 0
        print(f"weights: {source}")
        for path, chw, size in inputs:
            _, agreement, n = export.compare_onnx_with_eager(model, runner, chw,
                                                             torch.tensor(size))
            pixels = size[0] * size[1]
            equal += agreement * pixels
            total += pixels
            segments += n
            if len(inputs) > 1:
                print(f"  {os.path.basename(path)}: {100 * agreement:.5f}% of pixels, {n} segments")
        eager, onnx = [], []
        chw, size = inputs[0][1], inputs[0][2]
        for _ in range(args.repeat):
            start = time.perf_counter()
            with torch.no_grad():
                model([{"image": chw, "height": size[0], "width": size[1]}])
            eager.append(time.perf_counter() - start)
            start = time.perf_counter()
            runner(chw.numpy(), size)
            onnx.append(time.perf_counter() - start)
    print(f"{len(inputs)} image(s), input {tuple(inputs[0][1].shape)} first; {segments} segments")
    print(f"pixels equal to the eager model: {100 * equal / total:.5f}%")
    if len(eager) > 1:
        print("eager s: " + " ".join(f"{t:.2f}" for t in eager))
        print("onnx runner s: " + " ".join(f"{t:.2f}" for t in onnx))
        print(f"warm median (runs 2..): eager {sorted(eager[1:])[len(eager[1:]) // 2]:.2f} s, "
              f"onnx runner {sorted(onnx[1:])[len(onnx[1:]) // 2]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
