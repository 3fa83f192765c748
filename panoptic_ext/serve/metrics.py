"""Prometheus text-format metrics of the server (GET /metrics), with no client library: the
request counts by path and status, request latency, batch sizes, queue depth and model time."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence

__all__ = ["Histogram", "Metrics"]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _fmt(v: float) -> str:
    return repr(float(v)) if v != float("inf") else "+Inf"


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus histograms are exposed."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        self.name, self.help = name, help
        self.buckets = tuple(buckets) + (float("inf"),)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        lines += [f'{self.name}_bucket{{le="{_fmt(b)}"}} {c}'
                  for b, c in zip(self.buckets, self.counts, strict=True)]
        return lines + [f"{self.name}_sum {_fmt(self.sum)}", f"{self.name}_count {self.count}"]


class Metrics:
    """The server's counters; thread-safe (the model worker records batches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.latency = Histogram("panoptic_request_seconds",
                                 "POST /v1/panoptic latency, request received to answer",
                                 LATENCY_BUCKETS)
        self.batch_size = Histogram("panoptic_batch_size", "Images per model batch",
                                    BATCH_BUCKETS)
        self.model_time = Histogram("panoptic_model_seconds", "Model time per batch",
                                    LATENCY_BUCKETS)
        self.waiting = 0  # requests decoded and waiting for (or in) a model batch

    def observe_request(self, method: str, path: str, status: int, seconds: float | None
                        ) -> None:
        with self._lock:
            self.requests[(method, path, status)] += 1
            if seconds is not None:
                self.latency.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.model_time.observe(seconds)

    def add_waiting(self, n: int) -> None:
        with self._lock:
            self.waiting += n

    def render(self, extra_gauges: Callable[[], dict[str, tuple[str, float]]] | None = None
               ) -> str:
        """The exposition text (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP panoptic_requests_total HTTP requests by method, path and status",
                     "# TYPE panoptic_requests_total counter"]
            for (method, path, status), n in sorted(self.requests.items()):
                labels = _labels([("method", method), ("path", path), ("status", str(status))])
                lines.append(f"panoptic_requests_total{labels} {n}")
            for h in (self.latency, self.batch_size, self.model_time):
                lines += h.render()
            gauges = {"panoptic_queue_depth": ("Requests waiting for or in a model batch",
                                               float(self.waiting))}
            gauges.update(extra_gauges() if extra_gauges else {})
            for name, (help, value) in gauges.items():
                lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {_fmt(value)}"]
        return "\n".join(lines) + "\n"
