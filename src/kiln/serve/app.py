"""The ASGI app: a dataplane, its protocol adapters, metrics and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from kiln.bundle.load import Bundle
from kiln.serve.access_log import AccessLogMiddleware
from kiln.serve.auth import AuthMiddleware, Guard
from kiln.serve.batching import BatchConfig
from kiln.serve.classify_routes import ClassifyAdapter
from kiln.serve.dashboard import dashboard_routes, open_monitor_service
from kiln.serve.dataplane import DataPlane, Limits
from kiln.serve.errors import EXCEPTION_HANDLERS, ErrorBoundary
from kiln.serve.feedback import feedback_routes
from kiln.serve.image_routes import ImageAdapter
from kiln.serve.metrics import Metrics, MetricsMiddleware
from kiln.serve.models import load_model
from kiln.serve.monitoring import RequestLogMiddleware, monitor_routes
from kiln.serve.openai_routes import OpenAIAdapter
from kiln.serve.openapi import openapi_routes
from kiln.serve.repository import CanarySpec, ModelRepository
from kiln.serve.v2_rest import V2Adapter
from kiln.settings import Settings

if TYPE_CHECKING:
    from kiln.monitor.requestlog import RequestLog

log = logging.getLogger("kiln.serve")


async def watch_keys(guard: Guard, every_s: float) -> None:
    """Reload ``guard``'s keys file whenever it changes (checked every ``every_s`` seconds, off the loop)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await anyio.to_thread.run_sync(guard.reload_if_changed)
        except Exception:  # never let the watcher die: the next check tries again
            log.exception("checking the API keys file for changes failed")


def build_app(
    dataplane: DataPlane,
    settings: Settings,
    metrics: Metrics | None = None,
    repository: ModelRepository | None = None,
    guard: Guard | None = None,
    request_log: RequestLog | None = None,
) -> Starlette:
    """An app over an already loaded dataplane (``create_app`` loads one from a bundle); with a
    ``repository``, the model repository routes too; with a ``guard``, API keys (``kiln.serve.auth``)."""
    metrics = metrics or Metrics()
    limit = settings.max_request_bytes

    monitor = (
        open_monitor_service(settings, request_log, metrics.registry, dataplane, repository)
        if request_log is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dataplane.start()
        if request_log is not None:
            request_log.start()
        if monitor is not None:  # the alert watcher (kiln.serve.dashboard)
            monitor.start()
        watcher = None
        if guard is not None and guard.path is not None and settings.api_keys_reload_s > 0:
            watcher = asyncio.create_task(watch_keys(guard, settings.api_keys_reload_s))
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if monitor is not None:
            await anyio.to_thread.run_sync(monitor.stop)
        dataplane.drain()
        await anyio.to_thread.run_sync(dataplane.stop)
        if request_log is not None:  # after the last request: write what is queued
            await anyio.to_thread.run_sync(request_log.stop)

    routes = [
        *V2Adapter(dataplane, limit, repository).routes(),
        *OpenAIAdapter(dataplane, limit).routes(),
        *ClassifyAdapter(dataplane, limit).routes(),
        *ImageAdapter(dataplane, limit).routes(),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        *monitor_routes(request_log),
        *dashboard_routes(monitor),
        *feedback_routes(request_log, dataplane, limit),
        *openapi_routes(dataplane, repository is not None),
    ]
    logged = (
        [
            Middleware(
                RequestLogMiddleware, request_log=request_log, sample=settings.monitor_sample, routes=routes
            )
        ]
        if request_log is not None
        else []
    )
    auth = [Middleware(AuthMiddleware, guard=guard)] if guard is not None else []
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(AccessLogMiddleware, routes=routes, enabled=settings.access_log),
            Middleware(MetricsMiddleware, metrics=metrics),
            *logged,
            Middleware(ErrorBoundary),
            *auth,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.dataplane = dataplane
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.repository = repository
    app.state.guard = guard
    app.state.request_log = request_log
    app.state.monitor = monitor
    return app


def create_app(bundle: Bundle, settings: Settings) -> Starlette:
    """Load the bundle's model (with one warm-up batch) and return the app that serves it."""
    return create_repository_app([bundle.root], settings, verified=[bundle])


def create_repository_app(
    paths: Sequence[Path],
    settings: Settings,
    canaries: Iterable[CanarySpec] = (),
    verified: Iterable[Bundle] = (),
) -> Starlette:
    """Load every model found under ``paths`` (bundles, versioned model folders or repository folders:
    see ``kiln.serve.repository``) and return the app that serves them, repository routes included.
    ``verified``: bundles already loaded and verified (they are not verified again)."""
    guard = Guard.from_file(settings.api_keys) if settings.api_keys is not None else None
    metrics = Metrics()
    dataplane = DataPlane(
        Limits.from_settings(settings),
        observer=metrics.observe_inference,
        batching=BatchConfig.from_settings(settings),
        queue_observer=metrics.observe_queue,
        token_observer=metrics.observe_tokens,
    )
    repository = ModelRepository(
        paths,
        dataplane,
        lambda b: load_model(
            b, threads=settings.threads, text_overflow=settings.text_overflow, spinning=settings.ort_spinning
        ),
        canaries=canaries,
        verified=verified,
    )
    repository.load_all()
    request_log = None
    if settings.monitor:  # SQLAlchemy is imported only when the server keeps a request log
        from kiln.monitor.requestlog import open_request_log

        names = sorted(dataplane.model_names)
        request_log = open_request_log(settings, names[0] if names else "kiln", metrics.registry)
    return build_app(dataplane, settings, metrics, repository, guard, request_log)
