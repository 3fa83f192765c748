"""The HTTP API against a running tools/serve.py: answers equal tools/demo.py's files, bad
input gets a 4xx naming the problem, 16 concurrent clients get batched answers equal to the
one-at-a-time ones with bounded memory, /metrics counts it all."""

import base64
import io
import os
import re
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from panoptic_ext.formats import rgb_to_id
from tests.helpers.serve import assert_same_segments

TIMEOUT = 60


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _post(url: str, path: str, query: str = "", client=httpx) -> dict:
    with open(path, "rb") as f:
        r = client.post(f"{url}/v1/panoptic{query}", files={"file": (os.path.basename(path), f)},
                        timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def _plain(segments: list[dict]) -> list[dict]:
    """segments_info as predictions.json holds them (no class name, no RLE)."""
    return [{k: v for k, v in s.items() if k not in ("category_name", "segmentation")}
            for s in segments]


def test_ready_and_metadata(server, demo_outputs):
    assert httpx.get(server.url + "/healthz", timeout=TIMEOUT).json() == {"status": "ready"}
    meta = httpx.get(server.url + "/v1/metadata", timeout=TIMEOUT).json()
    categories = demo_outputs[2]
    assert [{k: c[k] for k in ("id", "name", "isthing")} for c in meta["categories"]] == categories
    assert all(len(c["color"]) == 3 for c in meta["categories"])
    assert re.fullmatch(r"[0-9a-f]{64}", meta["config_digest"])
    assert meta["runtime"] == "torch"  # tests/conftest.py: PANOPTIC_EXT_AUTO_RUNTIME=torch


def test_answers_equal_demo_files(server, images, demo_outputs):
    by_stem, out, categories = demo_outputs
    names = {c["id"]: c["name"] for c in categories}
    for path in images:
        body = _post(server.url, path, "?png=1")
        expected = by_stem[_stem(path)]
        png = base64.b64decode(body["png"])
        assert png == (out / "panoptic" / expected["file_name"]).read_bytes()
        assert _plain(body["segments_info"]) == expected["segments_info"]
        assert (body["height"], body["width"]) == (expected["height"], expected["width"])
        assert all(s["category_name"] == names[s["category_id"]] for s in body["segments_info"])
        ids = rgb_to_id(np.asarray(Image.open(io.BytesIO(png))))
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in body["segments_info"]}


def test_raw_body_and_rle(server, images, demo_outputs):
    from pycocotools import mask as mask_utils

    path = images[0]
    with open(path, "rb") as f:
        r = httpx.post(server.url + "/v1/panoptic?rle=1&png=1", content=f.read(),
                       headers={"Content-Type": "image/jpeg"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert _plain(body["segments_info"]) == demo_outputs[0][_stem(path)]["segments_info"]
    ids = rgb_to_id(np.asarray(Image.open(io.BytesIO(base64.b64decode(body["png"])))))
    for seg in body["segments_info"]:
        rle = dict(seg["segmentation"], counts=seg["segmentation"]["counts"].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), ids == seg["id"])


def test_merge_thresholds_per_request(server, images):
    """A request's merge settings apply to it alone. The model trains 2 random iterations, so
    its answer may hold no things or no stuff: the test checks each kind it has. A confidence
    threshold of 1.0 removes every thing; a stuff area limit above every stuff region removes
    the stuff (a limit of 0 first gives every predicted stuff label a region)."""
    default = _post(server.url, images[0])
    things = [s for s in default["segments_info"] if s["isthing"]]
    every = _post(server.url, images[0], "?stuff_area_limit=0")
    assert every["merge"] == {"stuff_area_limit": 0}
    stuff = [s for s in every["segments_info"] if not s["isthing"]]
    assert things or stuff, "the tiny model should predict something on a synthetic image"
    if things:
        body = _post(server.url, images[0], "?instances_confidence_thresh=1.0")
        assert body["merge"] == {"instances_confidence_thresh": 1.0}
        assert not [s for s in body["segments_info"] if s["isthing"]]
    if stuff:
        limit = max(s["area"] for s in stuff) + 1  # every stuff region is now too small
        body = _post(server.url, images[0], f"?stuff_area_limit={limit}")
        assert body["merge"] == {"stuff_area_limit": limit}
        assert not [s for s in body["segments_info"] if not s["isthing"]]
    assert _post(server.url, images[0]) == default  # the next request has the defaults again


def _bad_requests(images, tmp_path):
    good = open(images[0], "rb").read()
    truncated = io.BytesIO()
    Image.open(images[0]).save(truncated, "PNG")
    corrupt = bytearray(truncated.getvalue())
    start = corrupt.find(b"IDAT") + 100
    corrupt[start:start + 50] = bytes(range(50))  # compressed pixels, not the header
    corrupt = bytes(corrupt)
    lab = io.BytesIO()
    Image.new("LAB", (8, 8)).save(lab, "TIFF")
    big = io.BytesIO()
    Image.new("L", (5000, 4000)).save(big, "PNG")  # 20 M pixels > the default 16.7 M
    jpeg = {"Content-Type": "image/jpeg"}
    return {
        "empty body": (dict(content=b"", headers=jpeg), "", 400, "empty body"),
        "empty file": (dict(files={"file": ("a.jpg", b"")}), "", 400, "empty body"),
        "not an image": (dict(content=b"hello, world" * 10, headers=jpeg), "", 400,
                         "not an image"),
        "truncated": (dict(content=truncated.getvalue()[:-200], headers={
            "Content-Type": "image/png"}), "", 400, "corrupt or truncated PNG"),
        "truncated jpeg": (dict(content=good[:len(good) // 2], headers=jpeg), "", 400,
                           "corrupt or truncated JPEG"),
        "corrupt": (dict(content=corrupt, headers={"Content-Type": "image/png"}), "", 400,
                    "corrupt or truncated PNG"),
        "over pixel limit": (dict(content=big.getvalue(), headers={"Content-Type": "image/png"}),
                             "", 413, "over the limit of 16777216"),
        "unsupported mode": (dict(content=lab.getvalue(), headers={
            "Content-Type": "image/tiff"}), "", 415, "unsupported image mode 'LAB'"),
        "wrong content type": (dict(content=good, headers={"Content-Type": "application/json"}),
                               "", 415, "wrong content type 'application/json'"),
        "no file field": (dict(files={"image": ("a.jpg", good)}), "", 400,
                          "no file in the field 'file' (fields: image)"),
        "unknown parameter": (dict(content=good, headers=jpeg), "?path=/etc/passwd", 400,
                              "unknown parameter(s) path"),
        "bad value": (dict(content=good, headers=jpeg), "?overlap_thresh=2", 400,
                      "overlap_thresh=2.0: must be in [0, 1]"),
        "repeated parameter": (dict(content=good, headers=jpeg), "?png=1&png=0", 400,
                               "png given more than once"),
    }


def test_bad_input_gets_4xx_naming_the_problem(server, images, tmp_path):
    cases = _bad_requests(images, tmp_path)
    with httpx.Client(timeout=TIMEOUT) as client:
        for name, (kwargs, query, status, message) in cases.items():
            r = client.post(f"{server.url}/v1/panoptic{query}", **kwargs)
            assert r.status_code == status, (name, r.text)
            assert r.json()["status"] == status, name
            assert message in r.json()["error"], (name, r.json()["error"])
        assert client.get(server.url + "/v1/panoptic").status_code == 405
    _post(server.url, images[0])  # and the worker keeps serving


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmRSS:")))


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


@pytest.mark.timeout(300)
def test_16_clients_x_25_requests(server, images):
    """Batched answers equal the one-at-a-time ones (scores up to float32 rounding), no error,
    memory bounded."""
    expected = {p: _post(server.url, p) for p in images}  # sequential: batches of one
    before_metrics = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    rss_before = _rss_kb(server.proc.pid)
    errors: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(timeout=TIMEOUT) as c:
            for j in range(25):
                path = images[(k + j) % len(images)]
                try:
                    got = _post(server.url, path, client=c)
                    want = expected[path]
                    assert (got["height"], got["width"]) == (want["height"], want["width"])
                    assert_same_segments(got["segments_info"], want["segments_info"])
                except (AssertionError, httpx.HTTPError) as e:
                    errors.append(f"client {k} request {j}: {e}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    grown_mb = (_rss_kb(server.proc.pid) - rss_before) / 1024
    assert grown_mb < 300, f"server memory grew by {grown_mb:.0f} MB over 400 requests"
    text = httpx.get(server.url + "/metrics", timeout=TIMEOUT).text
    images_run = _metric(text, "panoptic_batch_size_sum") - _metric(
        before_metrics, "panoptic_batch_size_sum")
    batches = _metric(text, "panoptic_batch_size_count") - _metric(
        before_metrics, "panoptic_batch_size_count")
    assert images_run == 400
    assert batches < 400, "concurrent requests were never batched"
    assert _metric(text, "panoptic_queue_depth") == 0


def test_metrics_prometheus_text(server):
    httpx.get(server.url + "/healthz", timeout=TIMEOUT)
    r = httpx.get(server.url + "/metrics", timeout=TIMEOUT)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert 'panoptic_requests_total{method="GET",path="/healthz",status="200"}' in text
    for name in ("panoptic_request_seconds", "panoptic_batch_size", "panoptic_model_seconds"):
        assert f"# TYPE {name} histogram" in text
        assert f'{name}_bucket{{le="+Inf"}}' in text
    assert "# TYPE panoptic_queue_depth gauge" in text
