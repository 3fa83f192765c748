#!/usr/bin/env python
"""Time panopticapi's pq_compute against panoptic_ext's on the same generated files.

    python tools/benchmark_pq.py                      # 500 images of 640x480 in a tmp dir
    python tools/benchmark_pq.py --images 1000 --workdir /tmp/pqbench --workers 2

Asserts that both give the same numbers (1e-9) and prints both times, their ratio and the
in-memory per-image time. The logic lives in ``benchmarks/pq_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

# benchmarks/ is not installed: import it from the checkout this script sits in
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.pq_speed import run_benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="number of images (>= 1)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="our decoding processes (default: all CPUs, as panopticapi)")
    parser.add_argument("--workdir", default=None,
                        help="keep the generated data here (reused when it matches)")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run both N times, alternating, and report the fastest of each")
    parser.add_argument("--no-evaluators", action="store_true",
                        help="skip timing PanopticEvaluator against COCOPanopticEvaluator")
    parser.add_argument("--json", action="store_true", help="also print the report as JSON")
    args = parser.parse_args(argv)

    def run(workdir: str) -> dict:
        return run_benchmark(workdir, n_images=args.images, seed=args.seed,
                             workers=args.workers, height=args.height, width=args.width,
                             regenerate=args.regenerate, evaluators=not args.no_evaluators,
                             repeat=args.repeat)

    if args.workdir:
        report = run(args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="pq_bench_") as tmp:
            report = run(tmp)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
