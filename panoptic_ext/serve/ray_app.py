"""The same app as a Ray Serve deployment: replicas (fixed or autoscaled), each with the model
loaded and warmed, batching with ``@serve.batch``.

    python tools/serve.py --config-file C --ray --replicas 2 [--max-replicas 4] KEY VALUE ...
    serve run panoptic_ext.serve.ray_app:app_builder config_file=C opts="MODEL.WEIGHTS w.pth"

On a cluster, set RAY_ADDRESS (e.g. ray://head:10001 or auto) and every node needs this
package and the weights file at the same path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .service import Job, ServeSettings

__all__ = ["app_builder", "build_app", "serve_ray"]

logger = logging.getLogger(__name__)

DEPLOYMENT = "panoptic"


def build_app(config_file: str, opts: Sequence[str], settings: ServeSettings,
              replicas: int = 1, max_replicas: int | None = None, replica_cpus: float = 1.0
              ) -> Any:
    """A bound Ray Serve application (for ``serve.run``)."""
    from ray import serve

    if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
        raise ValueError(f"--replicas must be >= 1 and --max-replicas >= --replicas, got "
                         f"{replicas} and {max_replicas}")
    scaling: dict[str, Any] = {"num_replicas": replicas}
    if max_replicas is not None:
        scaling = {"autoscaling_config": {
            "min_replicas": replicas, "max_replicas": max_replicas,
            # a replica is busy with about one batch in flight and one forming
            "target_ongoing_requests": 2 * settings.max_batch_size}}

    @serve.deployment(name=DEPLOYMENT, ray_actor_options={"num_cpus": replica_cpus},
                      max_ongoing_requests=4 * settings.max_batch_size,
                      health_check_period_s=10, graceful_shutdown_timeout_s=
                      settings.drain_timeout_s, **scaling)
    @serve.ingress()
    class PanopticDeployment:
        """One replica: the model loaded and warmed in the constructor (Ray routes to it only
        then), batches run in a worker thread off the replica's event loop."""

        def __init__(self, config_file: str, opts: list[str], settings: ServeSettings):
            import torch

            from ..engine.defaults import setup_cfg
            from .metrics import Metrics
            from .service import PanopticService

            torch.set_num_threads(max(1, int(replica_cpus)))
            cfg = setup_cfg(config_file, opts, eval_only=True)
            self.settings = settings
            self.service = PanopticService.load(cfg, settings)
            self.metrics = Metrics()
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="panoptic-model")
            self.infer.set_max_batch_size(settings.max_batch_size)
            self.infer.set_batch_wait_timeout_s(settings.max_wait_ms / 1000.0)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def infer(self, jobs: list[Job]) -> list[Any]:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            out = await loop.run_in_executor(self._pool, self.service.run_batch, jobs)
            self.metrics.observe_batch(len(jobs), loop.time() - t0)
            return out

        def __serve_build_asgi_app__(self):
            from .app import create_app

            return create_app(self.service, self.settings, infer=self.infer,
                              metrics=self.metrics)

    return PanopticDeployment.bind(config_file, list(opts), settings)


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run panoptic_ext.serve.ray_app:app_builder config_file=C opts="K V ..."
    [replicas=N max_replicas=M max_batch_size=B max_wait_ms=W]``."""
    known = {"config_file", "opts", "replicas", "max_replicas", "max_batch_size", "max_wait_ms"}
    unknown = sorted(set(args) - known)
    if unknown or "config_file" not in args:
        raise ValueError(f"serve run arguments: config_file=FILE is required; known: "
                         f"{sorted(known)}; unknown: {unknown}")
    d = ServeSettings()
    settings = ServeSettings(max_batch_size=int(args.get("max_batch_size", d.max_batch_size)),
                             max_wait_ms=float(args.get("max_wait_ms", d.max_wait_ms)))
    return build_app(args["config_file"], shlex.split(args.get("opts", "")), settings,
                     int(args.get("replicas", 1)),
                     int(args["max_replicas"]) if "max_replicas" in args else None)


def serve_ray(config_file: str, opts: Sequence[str], settings: ServeSettings,
              host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
              max_replicas: int | None = None, replica_cpus: float = 1.0) -> int:
    """Start (or join, with RAY_ADDRESS) Ray, run the deployment behind Ray's HTTP proxy on
    host:port, and block until SIGTERM/SIGINT; then shut the application down."""
    import ray
    from ray import serve

    config_file = os.path.abspath(config_file)  # replicas may start elsewhere
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address or None, include_dashboard=False,
             runtime_env={"env_vars": _forwarded_env()})
    serve.start(http_options={"host": host, "port": port})
    app = build_app(config_file, opts, settings, replicas, max_replicas, replica_cpus)
    serve.run(app, name=DEPLOYMENT, route_prefix="/")
    logger.info(f"Ray Serve: http://{host}:{port}/ ({replicas}"
                f"{f'..{max_replicas}' if max_replicas else ''} replica(s), Ray at "
                f"{address or 'a local instance'})")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.info("Stopping: draining the replicas")
    serve.delete(DEPLOYMENT)
    serve.shutdown()
    ray.shutdown()
    return 0


def _forwarded_env() -> dict[str, str]:
    """What the replicas need of this process's environment (dataset root, runtime choice)."""
    names = ("DETECTRON2_DATASETS", "PANOPTIC_EXT_AUTO_RUNTIME", "PYTHONPATH", "OMP_NUM_THREADS")
    return {k: os.environ[k] for k in names if k in os.environ}
