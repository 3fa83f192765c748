"""tools/serve.py on the session's tiny trained model, as users start it, for the serve tests."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

from panoptic_ext.serve.process import ServerProcess
from tests.helpers.tools import REPO, SYNTHETIC_CONFIG, TINY_OPTS

# The tiny model with few proposals and detections (the box and mask heads are most of its
# time: the load test runs it 400 times) and every detection in the merge, so answers have
# things as well as stuff.
SERVE_OPTS = [*TINY_OPTS, "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "TEST.DETECTIONS_PER_IMAGE", "2",
              "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0"]


def tiny_server_args(weights: str) -> list[str]:
    """tools/serve.py arguments for the tiny trained model (64-px inputs)."""
    return ["--config-file", SYNTHETIC_CONFIG, *SERVE_OPTS, "MODEL.WEIGHTS", weights]


def start(args: Sequence[str], env: Mapping[str, str], log_dir: str, timeout: float = 180
          ) -> ServerProcess:
    """tools/serve.py `args` on a free port, ready."""
    log = os.path.join(log_dir, f"serve_{len(os.listdir(log_dir))}.log")
    return ServerProcess.started(args, log, timeout, env=env, cwd=REPO,
                                 command=[sys.executable, "tools/serve.py"])


class SharedServer:
    """One server for many test modules, started on first use and again after a test stopped
    it (the SIGTERM test); stopped at the end."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_dir: str):
        self.args, self.env, self.log_dir = list(args), dict(env), log_dir
        self.server: ServerProcess | None = None

    def get(self) -> ServerProcess:
        if self.server is None or self.server.proc.poll() is not None:
            self.server = start(self.args, self.env, self.log_dir)
        return self.server

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


@contextlib.contextmanager
def running_server(args: Sequence[str], env: Mapping[str, str], log_dir: str,
                   timeout: float = 180) -> Iterator[ServerProcess]:
    """`start`, and always stop."""
    server = start(args, env, log_dir, timeout)
    try:
        yield server
    finally:
        server.stop()


def assert_same_segments(got: list[dict], want: list[dict], rel: float = 1e-4) -> None:
    """Equal segments (ids, classes, areas, boxes, RLE: exactly) with scores equal up to float32
    rounding: a batch runs the convolutions and the box head's matrix products on more rows at
    once, and the kernels round the last bits differently from one image at a time."""
    import pytest

    strip = [{k: v for k, v in s.items() if k != "score"} for s in got]
    assert strip == [{k: v for k, v in s.items() if k != "score"} for s in want]
    assert [s.get("score") for s in got] == pytest.approx([s.get("score") for s in want],
                                                          rel=rel, abs=1e-6)
