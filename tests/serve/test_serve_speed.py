"""benchmarks/serve_speed.py (tools/benchmark_serve.py) on the package's server: images, a load
run, the report."""

import io

import pytest
from PIL import Image

from benchmarks.serve_speed import LoadResult, format_report, make_images, run_load


def test_drawn_images_when_no_files():
    bodies = make_images([], size=96, count=3)
    assert len(bodies) == 3 and len(set(bodies)) == 3
    assert Image.open(io.BytesIO(bodies[0])).size == (96, 96)


def test_load_run_and_report(server):
    bodies = make_images([], size=48, count=2)
    result = run_load(server.url, bodies, clients=2, requests=2, name="batched")
    assert result.errors == [] and len(result.latencies) == 4
    failed = run_load(server.url + "/nowhere", bodies, 1, 1, "one_at_a_time")
    assert failed.latencies == [] and failed.errors[0].startswith("404")
    report = {"image_size": 48, "max_batch_size": 8, "max_wait_ms": 10.0, "cpus": 2,
              "runs": [failed.summary(), result.summary()], "speedup": 1.5}
    text = format_report(report)
    assert "batched" in text and "1.50x one request at a time" in text
    assert "one_at_a_time error: 404" in text


def test_percentiles():
    r = LoadResult("x", 1, 4, seconds=2.0, latencies=[0.1, 0.2, 0.3, 0.4])
    assert r.throughput == 2.0
    assert r.percentile_ms(50) == pytest.approx(250.0)
    assert r.summary()["p99_ms"] == 397.0  # numpy: linear between 0.3 and 0.4
