#!/usr/bin/env python
"""Throughput and latency of the server under load: N concurrent clients x M requests with
dynamic batching, against one request at a time on the same model, in one run.

    python tools/benchmark_serve.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \
        --clients 16 --requests 25 --size 512 MODEL.WEIGHTS output/demo/model_final.pth
"""

import argparse
import glob
import json
import os
import shlex
import sys

# benchmarks/ is not installed: import it from the checkout this script sits in
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.serve_speed import DEFAULT_IMAGES, format_report, run_benchmark  # noqa: E402
from panoptic_ext.cli import parse_args_and_overrides  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (batched run)")
    p.add_argument("--requests", type=int, default=25, help="requests per client")
    p.add_argument("--baseline-requests", type=int, default=None,
                   help="requests of the one-at-a-time run (default: --requests)")
    p.add_argument("--size", type=int, default=512, help="images are resized to SIZE x SIZE")
    p.add_argument("--images", default=DEFAULT_IMAGES,
                   help="glob of images to send (drawn ones if nothing matches)")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--server-args", default="", metavar="'FLAGS'",
                   help="more tools/serve.py flags for the batched run, e.g. '--ray --replicas 2 "
                        "--replica-cpus 1' (set RAY_ADDRESS=local for a private Ray)")
    p.add_argument("--output", metavar="JSON", help="also write the report here")
    return p


def main(argv=None) -> int:
    args, opts = parse_args_and_overrides(get_parser(), argv)
    report = run_benchmark(args.config_file, opts, clients=args.clients,
                           requests=args.requests, size=args.size,
                           images=sorted(glob.glob(args.images)),
                           max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                           baseline_requests=args.baseline_requests,
                           server_args=shlex.split(args.server_args))
    print(format_report(report))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if any(r["errors"] for r in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
