"""tools/serve.py's logic: arguments, then uvicorn on this machine or Ray Serve on a cluster.

SIGTERM (or Ctrl-C) stops taking connections, answers the requests in flight, then exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

from ..cli import parse_args_and_overrides
from ..engine.defaults import setup_cfg
from .service import PanopticService, ServeSettings

__all__ = ["get_parser", "main", "serve_http", "settings_from_args"]

logger = logging.getLogger(__name__)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Serve a Panoptic FPN model over HTTP: POST /v1/panoptic, a page at /, "
                    "/healthz, /v1/metadata, /metrics. Trailing KEY VALUE pairs override the "
                    "config (e.g. MODEL.WEIGHTS output/demo/model_final.pth).")
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 to "
                        "expose it)")
    p.add_argument("--port", type=int, default=8000)
    d = ServeSettings()
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help="images per model call at most (1: one request at a time)")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long the first request of a batch waits for others")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="larger images are refused with 413")
    p.add_argument("--max-bytes", type=int, default=d.max_bytes,
                   help="larger uploads are refused with 413")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout_s, metavar="S",
                   help="on SIGTERM, wait this long for requests in flight")
    p.add_argument("--log-level", default="info")
    ray = p.add_argument_group("Ray Serve (a local Ray, or the cluster at $RAY_ADDRESS)")
    ray.add_argument("--ray", action="store_true", help="serve as a Ray Serve deployment")
    ray.add_argument("--replicas", type=int, default=1,
                     help="model replicas (with --max-replicas: the autoscaling minimum)")
    ray.add_argument("--max-replicas", type=int, default=None,
                     help="autoscale between --replicas and this many replicas")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs per replica")
    return p


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                         max_pixels=args.max_pixels, max_bytes=args.max_bytes,
                         drain_timeout_s=args.drain_timeout)


def serve_http(config_file: str, opts: Sequence[str], settings: ServeSettings,
               host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> int:
    """Run the app under uvicorn until SIGTERM/SIGINT; 0 after a clean drain, 1 when the
    model could not be loaded."""
    import uvicorn

    from .app import create_app

    cfg = setup_cfg(config_file, opts, eval_only=True)  # a bad config fails before binding
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_error(e: BaseException) -> None:
        failed.append(e)
        if server is not None:
            server.should_exit = True

    app = create_app(lambda: PanopticService.load(cfg, settings), settings,
                     on_load_error=on_load_error)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=settings.drain_timeout_s,
                            timeout_keep_alive=5)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it drained on once done; a handler of ours makes that a
    # no-op, so a drained server exits 0 rather than dying of the signal.
    saved = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info(f"Serving on http://{host}:{port} (max batch {settings.max_batch_size}, "
                f"max wait {settings.max_wait_ms:g} ms)")
    try:
        server.run()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if failed:
        print(f"ERROR: could not load the model: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from detectron2.utils.logger import setup_logger

    args, opts = parse_args_and_overrides(get_parser(), argv)
    setup_logger(name="panoptic_ext")
    setup_logger(name="detectron2")
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    if args.ray:
        from .ray_app import serve_ray

        return serve_ray(args.config_file, opts, settings, host=args.host, port=args.port,
                         replicas=args.replicas, max_replicas=args.max_replicas,
                         replica_cpus=args.replica_cpus)
    return serve_http(args.config_file, opts, settings, args.host, args.port, args.log_level)
