"""The ASGI app: POST /v1/panoptic, GET /healthz, /v1/metadata, /metrics and the page at /.

One app for both ways of serving: tools/serve.py runs it under uvicorn with the
:class:`~panoptic_ext.serve.batching.DynamicBatcher`; the Ray Serve deployment passes its
``@serve.batch`` method as `infer`. Requests carry images and settings only: no parameter names
a file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .batching import DynamicBatcher
from .metrics import Metrics
from .service import BadInput, Job, PanopticService, ServeSettings

__all__ = ["STATIC_DIR", "create_app"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_ROUTES = ("/", "/healthz", "/metrics", "/v1/metadata", "/v1/panoptic")
_RAW_TYPES = ("application/octet-stream",)


class _State:
    """The service once loaded (or why it failed) and who runs jobs."""

    def __init__(self, service: PanopticService | None):
        self.service = service
        self.error: str | None = None
        self.infer: Callable[[Job], Awaitable[Any]] | None = None

    def ready(self) -> PanopticService:
        if self.service is None or self.infer is None:
            why = f"failed to load: {self.error}" if self.error else "still loading"
            raise BadInput(503, f"model not ready ({why}); poll GET /healthz")
        return self.service


async def _read_image_bytes(request: Request, max_bytes: int) -> bytes:
    """The upload: multipart field `file`, or the raw body of an image/* or octet-stream."""
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";")[0].strip().lower()
    length = request.headers.get("content-length", "")
    too_big = f"body over the limit of {max_bytes} bytes (--max-bytes)"
    if length.isdigit() and int(length) > max_bytes:
        raise BadInput(413, too_big)
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:  # noqa: BLE001 - starlette's multipart errors have no common base
            raise BadInput(400, f"malformed multipart body: {e}") from e
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                fields = ", ".join(form.keys()) or "none"
                raise BadInput(400, f"multipart body has no file in the field 'file' (fields: "
                                    f"{fields}); send it as -F file=@image.jpg")
            data = await upload.read()
        finally:
            await form.close()
    elif kind.startswith("image/") or kind in _RAW_TYPES:
        data = await request.body()
    else:
        raise BadInput(415, f"wrong content type {ctype or '(none)'!r}: send multipart/form-data "
                            "with the image in the field 'file', or the image itself as the body "
                            "with Content-Type image/* or application/octet-stream")
    if len(data) > max_bytes:
        raise BadInput(413, too_big)
    return data


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def create_app(
    service: PanopticService | Callable[[], PanopticService],
    settings: ServeSettings | None = None,
    *,
    infer: Callable[[Job], Awaitable[Any]] | None = None,
    metrics: Metrics | None = None,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app around a loaded `service`, or a loader called in a thread at start-up (so
    /healthz answers "loading" meanwhile; `on_load_error` hears a failure).

    `infer`: runs one job and returns its result (default: a DynamicBatcher over
    ``service.run_batch`` with `settings`' batch size and wait).
    """
    if settings is None:
        if not isinstance(service, PanopticService):
            raise ValueError("create_app with a loader needs the settings")
        settings = service.settings
    metrics = metrics or Metrics()
    state = _State(service if isinstance(service, PanopticService) else None)

    def load() -> None:
        try:
            state.service = service()  # type: ignore[operator]
        except BaseException as e:  # noqa: BLE001 - reported by /healthz and the callback
            state.error = f"{type(e).__name__}: {e}"
            logger.exception("Could not load the model")
            if on_load_error is not None:
                on_load_error(e)
        else:
            logger.info("Model loaded and warmed: ready")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = None
        if infer is None:
            batcher = DynamicBatcher(lambda jobs: state.ready().run_batch(jobs),
                                     settings.max_batch_size, settings.max_wait_ms,
                                     metrics.observe_batch)
            await batcher.start()
            state.infer = batcher.submit
        else:
            state.infer = infer
        if state.service is None:
            threading.Thread(target=load, name="panoptic-load", daemon=True).start()
        try:
            yield
        finally:
            if batcher is not None:
                await batcher.stop()

    app = FastAPI(title="panoptic_ext", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.panoptic = state
    app.state.metrics = metrics

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.middleware("http")
    async def count(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        path = request.url.path
        label = path if path in _ROUTES else "/static" if path.startswith("/static/") else "other"
        seconds = time.perf_counter() - t0 if path == "/v1/panoptic" else None
        metrics.observe_request(request.method, label, response.status_code, seconds)
        return response

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness (it answers) and readiness (200 only once the model is loaded and warmed)."""
        if state.service is not None and state.infer is not None:
            return JSONResponse({"status": "ready"})
        status = "failed" if state.error else "loading"
        return JSONResponse({"status": status, "error": state.error}, status_code=503)

    @app.get("/v1/metadata")
    async def metadata() -> dict[str, Any]:
        return state.ready().metadata()

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/panoptic")
    async def panoptic(request: Request) -> JSONResponse:
        """An image (multipart `file` or raw body) -> COCO panoptic segments_info, with
        ?png=1 the panoptic PNG (base64), with ?rle=1 each segment's COCO RLE; merge keys
        (e.g. ?overlap_thresh=0.6) apply to this request only."""
        svc = state.ready()
        params: dict[str, str] = {}
        for key, value in request.query_params.multi_items():
            if key in params:
                raise BadInput(400, f"parameter {key} given more than once")
            params[key] = value
        svc.check_params(params)
        data = await _read_image_bytes(request, settings.max_bytes)
        job = svc.job(await run_in_threadpool(svc.decode, data), params)
        metrics.add_waiting(1)
        try:
            result = await state.infer(job)  # type: ignore[misc]
        finally:
            metrics.add_waiting(-1)
        return JSONResponse(await run_in_threadpool(svc.answer, job, result))

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
