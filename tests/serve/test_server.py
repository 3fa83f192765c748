"""tools/serve.py's life cycle: SIGTERM answers the requests in flight, then exits 0; a model
that cannot be loaded makes it exit 1 naming the problem."""

import threading

import httpx
import pytest

from panoptic_ext.serve.process import free_port


@pytest.mark.timeout(180)
def test_sigterm_drains_in_flight_requests_then_exits_0(shared_server, images):
    server = shared_server.get()  # stopped here; the next test that needs it starts another
    data = open(images[0], "rb").read()
    outcomes: list[object] = []

    def post() -> None:
        try:
            r = httpx.post(server.url + "/v1/panoptic?png=1", content=data, timeout=60,
                           headers={"Content-Type": "image/jpeg"})
            outcomes.append(r.status_code)
        except httpx.ConnectError:
            outcomes.append("refused")  # arrived after SIGTERM: not taken, as it should be
        except httpx.HTTPError as e:
            outcomes.append(repr(e))  # dropped while in flight: the failure this test is for

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for _ in range(400):  # SIGTERM once requests are in the server, waiting or in the model
        if "panoptic_queue_depth 0.0" not in httpx.get(server.url + "/metrics", timeout=10).text:
            break
    else:
        pytest.fail("no request reached the model")
    assert server.stop() == 0, server.output()
    for t in threads:
        t.join(60)
    assert 200 in outcomes
    assert set(outcomes) <= {200, "refused"}, (outcomes, server.output())
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=5)


def test_unloadable_model_exits_1(tiny_root, capsys, tmp_path):
    from panoptic_ext.serve.server import serve_http
    from panoptic_ext.serve.service import ServeSettings
    from tests.helpers.serve import SERVE_OPTS
    from tests.helpers.tools import SYNTHETIC_CONFIG

    missing = str(tmp_path / "missing.pth")
    code = serve_http(SYNTHETIC_CONFIG, [*SERVE_OPTS, "MODEL.WEIGHTS", missing],
                      ServeSettings(), port=free_port(), log_level="warning")
    assert code == 1
    assert "missing.pth" in capsys.readouterr().err


def test_binds_this_machine_only_by_default():
    from panoptic_ext.serve.server import get_parser

    args = get_parser().parse_args(["--config-file", "c.yaml"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
