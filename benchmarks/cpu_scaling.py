"""What this CPU's cores give the model: images/s of one process using every thread against
several single-threaded processes side by side, one image per call and in batches.

The serving throughput target (dynamic batching against one request at a time) is bounded by
it: where two single-threaded processes together are no faster than one process with two
threads, the cores do not add up (e.g. two vCPUs on one physical core), and no arrangement of
requests, threads or replicas can beat what batching itself saves in arithmetic.

    python benchmarks/cpu_scaling.py --config-file configs/Synthetic/panoptic_fpn_R_50.yaml \\
        --size 512 MODEL.WEIGHTS output/demo/model_final.pth

`--outputs-ab` measures instead, in one process, what the server gains by asking the model for
the panoptic result alone rather than all its outputs (and checks the answers are the same).
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import queue
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# (processes, threads per process, images per model call)
SETTINGS = ((1, 0, 1), (1, 0, 8), (1, 1, 1), (0, 1, 1), (0, 1, 8))


def _worker(config: str, opts: Sequence[str], threads: int, batch: int, images: list,
            rounds: int, barrier: Any, out: Any) -> None:
    """One process: build the model with `threads` threads, warm it, wait for the others,
    then time `rounds` passes over `images`, `batch` images per model call (the server's
    path: predict_batch, then the COCO id map and segments)."""
    import torch

    torch.set_num_threads(threads)
    from panoptic_ext.apps.demo import PanopticDemo
    from panoptic_ext.engine.defaults import setup_cfg

    demo = PanopticDemo(setup_cfg(config, list(opts), eval_only=True))
    for image in images[:2]:
        demo.coco(demo.predict(image))
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(rounds):
        for k in range(0, len(images), batch):
            for p in demo.predict_batch(images[k:k + batch]):
                demo.coco(p)
    out.put(time.perf_counter() - t0)


def _side_by_side(target: Any, args: tuple, procs: int) -> float:
    """Seconds until the slowest of `procs` fresh processes running `target(*args, barrier,
    out)` side by side is done (each starts timing at the shared barrier)."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, barrier, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    seconds: list[float] = []
    while len(seconds) < procs:  # a worker that dies (bad config, no memory) ends the run
        try:
            seconds.append(out.get(timeout=1.0))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed:
                for w in workers:
                    w.terminate()
                raise RuntimeError(f"a benchmark process exited with code {failed[0]} (its "
                                   "error is printed above)") from None
    for w in workers:
        w.join()
    return max(seconds)


def run_scaling(config: str, opts: Sequence[str], images: list, rounds: int = 2
                ) -> list[dict[str, Any]]:
    """Images/s of each setting in SETTINGS (0 processes: one per core; 0 threads: every
    core), each run in fresh processes."""
    cores = os.cpu_count() or 1
    rows = []
    for procs, threads, batch in SETTINGS:
        procs, threads = procs or cores, threads or cores
        seconds = _side_by_side(_worker, (config, opts, threads, batch, images, rounds), procs)
        rows.append({"processes": procs, "threads": threads, "batch": batch,
                     "images_per_s": procs * rounds * len(images) / seconds})
    return rows


def _spin(n: int, barrier: Any, out: Any) -> None:
    """A pure-Python loop: integer work that needs no vector unit."""
    barrier.wait()
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    out.put(time.perf_counter() - t0)


def python_loop_scaling(n: int = 20_000_000) -> float:
    """The control: how much more of a pure-Python loop's work one process per core gets done
    than one process, in the same time; near the core count where the cores are real."""
    cores = os.cpu_count() or 1
    one, many = (procs * n / _side_by_side(_spin, (n,), procs) for procs in (1, cores))
    return many / one


def outputs_side_by_side(demo: Any, images: list, batches: Sequence[int] = (1, 8),
                         rounds: int = 4) -> list[dict[str, Any]]:
    """Images/s of the server's path (`predict_batch`, then `coco`) with the model asked for
    all its outputs against the panoptic result alone, in this process, alternating which goes
    first, after a warm-up pass of each that also checks the answers are identical."""
    def run(outputs: tuple[str, ...], batch: int) -> tuple[float, list]:
        t0 = time.perf_counter()
        answers = [demo.coco(p) for k in range(0, len(images), batch)
                   for p in demo.predict_batch(images[k:k + batch], outputs=outputs)]
        return len(images) / (time.perf_counter() - t0), answers

    from panoptic_ext.modeling.meta_arch import OUTPUTS

    modes = {"all": OUTPUTS, "panoptic": ("panoptic_seg",)}
    rows = []
    for batch in batches:
        warm = {name: run(outputs, batch)[1] for name, outputs in modes.items()}
        identical = all(a[1] == b[1] and (a[0] == b[0]).all()
                        for a, b in zip(warm["all"], warm["panoptic"], strict=True))
        speeds: dict[str, list[float]] = {name: [] for name in modes}
        for r in range(rounds):
            for name in (("all", "panoptic") if r % 2 == 0 else ("panoptic", "all")):
                speeds[name].append(run(modes[name], batch)[0])
        rows.append({"batch": batch, "identical": identical, **speeds})
    return rows


def format_outputs(rows: list[dict[str, Any]]) -> str:
    """Medians (min-max) per batch size; `x`: panoptic alone over all outputs."""
    lines = ["| images per call | all outputs, images/s | panoptic alone, images/s | x | "
             "identical answers |", "|---|---|---|---|---|"]
    for r in rows:
        a, p = statistics.median(r["all"]), statistics.median(r["panoptic"])
        lines.append(f"| {r['batch']} | {a:.2f} ({min(r['all']):.2f}-{max(r['all']):.2f}) | "
                     f"{p:.2f} ({min(r['panoptic']):.2f}-{max(r['panoptic']):.2f}) | "
                     f"{p / a:.2f} | {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines)


def format_scaling(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["images_per_s"]
    lines = ["| processes x threads | images per call | images/s | x first row |",
             "|---|---|---|---|"]
    lines += [f"| {r['processes']} x {r['threads']} | {r['batch']} | {r['images_per_s']:.2f} | "
              f"{r['images_per_s'] / base:.2f} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--images", default="datasets/synthetic_panoptic/val/*.jpg")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--size", type=int, default=512, help="images resized to SIZE x SIZE")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--outputs-ab", action="store_true",
                        help="instead: in this process, the server's path asking the model for "
                             "all outputs against the panoptic result alone (4 rounds each)")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    import cv2

    files = sorted(glob.glob(args.images))[:args.num_images]
    if not files:
        parser.error(f"--images {args.images!r} matches no file (run `make demo` first, or "
                     "point it at your own images)")
    images = [cv2.resize(cv2.imread(f), (args.size, args.size)) for f in files]
    if args.outputs_ab:
        from panoptic_ext.apps.demo import PanopticDemo
        from panoptic_ext.engine.defaults import setup_cfg

        demo = PanopticDemo(setup_cfg(args.config_file, list(args.opts), eval_only=True))
        print(format_outputs(outputs_side_by_side(demo, images, rounds=max(args.rounds, 4))))
        return 0
    print(format_scaling(run_scaling(args.config_file, args.opts, images, args.rounds)))
    print(f"control: a pure-Python loop gets {python_loop_scaling():.2f}x the work of one "
          f"process done with {os.cpu_count()} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
