"""Starting tools/serve.py on a free 127.0.0.1 port for a test, and always stopping it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import httpx

from tests.helpers.tools import REPO, SYNTHETIC_CONFIG, TINY_OPTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: str

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-5000:]


# The tiny model with few detections (its mask head is most of the time) and every one of them
# in the merge, so answers have things as well as stuff.
SERVE_OPTS = [*TINY_OPTS, "TEST.DETECTIONS_PER_IMAGE", "2",
              "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.0"]


def tiny_server_args(weights: str) -> list[str]:
    """tools/serve.py arguments for the session's tiny trained model (64-px inputs)."""
    return ["--config-file", SYNTHETIC_CONFIG, *SERVE_OPTS, "MODEL.WEIGHTS", weights]


def wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"server exited with {server.proc.returncode}:\n"
                                 f"{server.output()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"server not ready after {timeout} s:\n{server.output()}")


def start(args: Sequence[str], env: Mapping[str, str], log_dir: str, timeout: float = 180
          ) -> Server:
    """tools/serve.py `args` on a free port, ready (stopped if it does not get ready)."""
    port = free_port()
    log = os.path.join(log_dir, f"serve_{port}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "tools/serve.py", "--port", str(port), *args], cwd=REPO,
            env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server, timeout)
    except BaseException:
        stop(server)
        raise
    return server


class SharedServer:
    """One server for many test modules, started on first use and again after a test stopped
    it (the SIGTERM test); stopped at the end."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], log_dir: str):
        self.args, self.env, self.log_dir = list(args), dict(env), log_dir
        self.server: Server | None = None

    def get(self) -> Server:
        if self.server is None or self.server.proc.poll() is not None:
            self.server = start(self.args, self.env, self.log_dir)
        return self.server

    def close(self) -> None:
        if self.server is not None:
            stop(self.server)


@contextlib.contextmanager
def running_server(args: Sequence[str], env: Mapping[str, str], log_dir: str,
                   timeout: float = 180) -> Iterator[Server]:
    """tools/serve.py `args` on a free port, ready; SIGTERM (then SIGKILL of its process group)
    when done, whatever happened."""
    server = start(args, env, log_dir, timeout)
    try:
        yield server
    finally:
        stop(server)


def stop(server: Server, timeout: float = 60) -> int:
    """SIGTERM, wait for the drain; the exit code (SIGKILL of the group if it hangs)."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        return server.proc.wait(10)
    finally:
        with contextlib.suppress(ProcessLookupError):  # anything it left (Ray's processes)
            os.killpg(server.proc.pid, signal.SIGKILL)
