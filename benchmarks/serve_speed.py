"""tools/benchmark_serve.py's logic: N concurrent clients x M requests against the server with
dynamic batching, and the same model served one request at a time (batch size 1, one client:
what running tools/demo.py per request gives), in one run.

Each run starts its own server (python -m panoptic_ext.serve), warms it, and reports
throughput (images/s), latency p50/p95/p99 and errors.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from panoptic_ext.serve.process import ServerProcess

__all__ = ["LoadResult", "format_report", "make_images", "run_benchmark", "run_load"]

DEFAULT_IMAGES = "datasets/synthetic_panoptic/val/*.jpg"


@dataclass
class LoadResult:
    """One load run: per-request latencies (s) of the successful requests and the errors."""

    name: str
    clients: int
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "clients": self.clients, "requests": self.requests,
                "ok": len(self.latencies), "errors": len(self.errors),
                "seconds": round(self.seconds, 3),
                "throughput_img_s": round(self.throughput, 3),
                **{f"p{q}_ms": round(self.percentile_ms(q), 1) for q in (50, 95, 99)},
                "first_errors": self.errors[:5]}


def _drawn_image(size: int, seed: int) -> Image.Image:
    """A synthetic-looking picture (sky, ground, shapes) when no image files are given."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(90, 200, 3)))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, size // 2, size, size], fill=tuple(int(v) for v in rng.integers(40, 160, 3)))
    for _ in range(6):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 16, size // 5))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(
            [int(x) - r, int(y) - r, int(x) + r, int(y) + r], fill=color)
    return img


def make_images(paths: Sequence[str], size: int, count: int = 8) -> list[bytes]:
    """JPEG bytes of up to `count` images resized to size x size (drawn ones without files)."""
    images = [Image.open(p).convert("RGB") for p in list(paths)[:count]]
    images = images or [_drawn_image(size, seed) for seed in range(count)]
    out = []
    for img in images:
        buf = io.BytesIO()
        img.resize((size, size), Image.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run_load(url: str, bodies: Sequence[bytes], clients: int, requests: int, name: str,
             timeout: float = 300) -> LoadResult:
    """`clients` threads each posting `requests` images (raw JPEG bodies) one after another."""
    import httpx

    result = LoadResult(name, clients, requests, 0.0)
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=timeout) as c:
            for j in range(requests):
                body = bodies[(k * requests + j) % len(bodies)]
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/v1/panoptic", content=body,
                               headers={"Content-Type": "image/jpeg"})
                    error = None if r.status_code == 200 else f"{r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    error = f"{type(e).__name__}: {e}"
                with lock:
                    if error is None:
                        result.latencies.append(time.perf_counter() - t0)
                    else:
                        result.errors.append(error)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    return result


def _serve_and_load(name: str, server_args: Sequence[str], bodies: Sequence[bytes],
                    clients: int, requests: int, log_dir: str, ready_timeout: float
                    ) -> LoadResult:
    log = os.path.join(log_dir, f"{name}.log")
    server = ServerProcess.started(server_args, log, ready_timeout)
    try:
        run_load(server.url, bodies[:2], 1, 2, "warm-up")  # first requests pay extra
        return run_load(server.url, bodies, clients, requests, name)
    finally:
        server.stop()


def run_benchmark(config_file: str, opts: Sequence[str] = (), *, clients: int = 16,
                  requests: int = 25, size: int = 512, images: Sequence[str] = (),
                  max_batch_size: int = 8, max_wait_ms: float = 10.0,
                  baseline_requests: int | None = None, ready_timeout: float = 900,
                  log_dir: str | None = None, server_args: Sequence[str] = ()
                  ) -> dict[str, Any]:
    """Both runs, one after the other (never sharing the CPUs); the report as a dict.
    `server_args`: more tools/serve.py flags for the batched run only (e.g. ``--ray
    --replicas 2 --replica-cpus 1``: two single-threaded model processes)."""
    bodies = make_images(images, size)
    log_dir = log_dir or tempfile.mkdtemp(prefix="benchmark_serve_")
    common = ["--config-file", config_file, "--log-level", "warning"]
    baseline = _serve_and_load(
        "one_at_a_time", [*common, "--max-batch-size", "1", *opts], bodies, 1,
        baseline_requests or requests, log_dir, ready_timeout)
    batched = _serve_and_load(
        "batched", [*common, "--max-batch-size", str(max_batch_size), "--max-wait-ms",
                    str(max_wait_ms), *server_args, *opts], bodies, clients, requests, log_dir,
        ready_timeout)
    speedup = batched.throughput / baseline.throughput if baseline.throughput else float("nan")
    return {
        "config_file": config_file, "opts": list(opts), "image_size": size,
        "images": len(bodies), "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms,
        "server_args": list(server_args),
        "cpus": os.cpu_count(), "logs": log_dir,
        "runs": [baseline.summary(), batched.summary()],
        "speedup": round(speedup, 3),
    }


def format_report(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    rows = [[r["name"], r["clients"], r["ok"], r["errors"], r["throughput_img_s"], r["p50_ms"],
             r["p95_ms"], r["p99_ms"]] for r in report["runs"]]
    table = tabulate(rows, headers=["run", "clients", "ok", "errors", "img/s", "p50 ms",
                                    "p95 ms", "p99 ms"])
    lines = [f"{report['image_size']}x{report['image_size']} images, max batch "
             f"{report['max_batch_size']}, max wait {report['max_wait_ms']:g} ms, "
             f"{report['cpus']} CPUs {' '.join(report.get('server_args', []))}".rstrip(), table,
             f"throughput: {report['speedup']:.2f}x one request at a time"]
    for r in report["runs"]:
        lines += [f"{r['name']} error: {e}" for e in r["first_errors"]]
    return "\n".join(lines)
