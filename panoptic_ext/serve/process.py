"""A server in a child process on a free 127.0.0.1 port: started, waited for until /healthz
says ready, and always stopped (SIGTERM, then SIGKILL of whatever is left in its session).
The benchmark and the tests start servers with it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

__all__ = ["ServerProcess", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """``command + ["--port", P] + args`` (default command: ``python -m panoptic_ext.serve``),
    output to `log`."""

    def __init__(self, args: Sequence[str], log: str, env: Mapping[str, str] | None = None,
                 command: Sequence[str] | None = None, cwd: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [*(command or (sys.executable, "-m", "panoptic_ext.serve")),
               "--port", str(self.port), *args]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=dict(env or os.environ),
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def output(self, chars: int = 5000) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-chars:]

    def wait_ready(self, timeout: float) -> None:
        """Until GET /healthz is 200; RuntimeError with the server's output when it exits or
        the time is up."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout:g} s:\n{self.output()}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the drain; the exit code. A server that hangs, and anything
        left in its session (Ray's actors, each in its own process group), are killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)
        finally:
            for pid in _session(self.proc.pid):  # what it left behind (Ray's actors)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    @classmethod
    def started(cls, args: Sequence[str], log: str, timeout: float = 180,
                **kwargs) -> ServerProcess:
        """Started and ready (stopped again if it does not get ready)."""
        server = cls(args, log, **kwargs)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server


def _session(sid: int) -> list[int]:
    """Live processes of session `sid` (the server was started as its leader), from /proc."""
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids
