"""The same app as a Ray Serve deployment (tools/serve.py --ray) on a fresh local single-node
Ray: ready only with its replica loaded, and the same JSON as the uvicorn server."""

import httpx
import pytest

from tests.helpers.serve import running_server, tiny_server_args


@pytest.mark.timeout(240)
def test_ray_serve_gives_the_same_json(server, tiny_trained, serve_env, images, tmp_path):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    expected = [httpx.post(server.url + "/v1/panoptic?png=1&rle=1",
                           files={"file": open(p, "rb")}, timeout=60).json() for p in images]
    env = dict(serve_env, RAY_ADDRESS="local")  # never join a cluster running on this machine
    args = [*tiny_server_args(tiny_trained[1]), "--ray", "--replicas", "1",
            "--max-batch-size", "4",
            "--replica-cpus", "2"]  # torch threads as the server has them: the same floats
    with running_server(args, env, str(tmp_path), timeout=180) as ray_server:
        for path, want in zip(images, expected, strict=True):
            r = httpx.post(ray_server.url + "/v1/panoptic?png=1&rle=1",
                           files={"file": open(path, "rb")}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json() == want
        r = httpx.post(ray_server.url + "/v1/panoptic?nope=1", content=b"x",
                       headers={"Content-Type": "image/png"}, timeout=60)
        assert r.status_code == 400 and "unknown parameter(s) nope" in r.json()["error"]
        meta = httpx.get(ray_server.url + "/v1/metadata", timeout=60).json()
        assert meta.pop("settings")["max_batch_size"] == 4
        want = httpx.get(server.url + "/v1/metadata", timeout=60).json()
        assert meta == {k: v for k, v in want.items() if k != "settings"}
