"""The app factory: ``create_app(settings)`` wires storage, auth, jobs, the resources and the page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import metadata
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api import models, predictions, recordings, rules
from api.auth import ApiError, Authenticator, RateLimiter
from api.jobs import JobRunner
from api.schemas import Health
from api.storage import Storage
from api.workers import ProcessPool, worker_env
from rulefinder.classify.registry import ModelRegistry
from rulefinder.settings import Settings, effective_auth

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).resolve().parent / "web"


def _version() -> str:
    try:
        return metadata.version("rulefinder")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def expire_old(storage: Storage, retention_days: float, now: float | None = None) -> int:
    """Delete recordings (and their predictions) older than the retention period; returns how many."""
    if retention_days <= 0:
        return 0
    cutoff = (now if now is not None else time.time()) - retention_days * 86400.0
    expired = storage.expired_recordings(cutoff)
    for owner, rid in expired:
        storage.delete_recording(owner, rid)
    if expired:
        log.info("retention: deleted %d recordings older than %g days", len(expired), retention_days)
    return len(expired)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Refuses auth ``off`` on a non-loopback host (see ``effective_auth``)."""
    settings = settings or Settings()
    auth_mode = effective_auth(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        storage = Storage(settings.data_dir)
        app.state.storage = storage
        app.state.registry = ModelRegistry(data_dir=settings.data_dir / "models")
        app.state.auth = Authenticator(storage, auth_mode, RateLimiter(settings.rate_limit_per_minute))
        processes = ProcessPool(settings.workers, worker_env(settings)) if settings.worker_pool == "processes" else None
        app.state.jobs = JobRunner(storage, settings.workers, app.state.registry, processes=processes)
        await asyncio.to_thread(expire_old, storage, settings.retention_days)
        app.state.jobs.resume()
        sweeper = asyncio.create_task(_sweep(storage, settings.retention_days))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.to_thread(app.state.jobs.close)

    app = FastAPI(
        title="rulefinder",
        version=_version(),
        description="Identify the learning rule a brain area uses from recordings over the course of learning. "
        "Errors are `{\"detail\": ...}`; auth is `Authorization: Bearer <key>` (see docs/api.md).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.auth_mode = auth_mode

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: logged with its traceback, answered in the documented error shape.
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/healthz", response_model=Health, tags=["service"], summary="Liveness")
    async def healthz() -> Health:
        return Health(version=_version(), auth=auth_mode)

    for module in (recordings, predictions, rules, models):
        app.include_router(module.router)

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    return app


async def _sweep(storage: Storage, retention_days: float) -> None:
    if retention_days <= 0:
        return
    # Check a few times per retention period, at most hourly.
    period = min(3600.0, retention_days * 86400.0 / 10)
    while True:
        await asyncio.sleep(period)
        try:
            await asyncio.to_thread(expire_old, storage, retention_days)
        except Exception:  # noqa: BLE001 - the sweeper must survive a bad pass; it is logged
            log.exception("retention sweep failed")
