"""The ASGI app: a dataplane, its protocol adapters, metrics and error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from kiln.bundle.load import Bundle
from kiln.serve.batching import BatchConfig
from kiln.serve.dataplane import DataPlane, Limits
from kiln.serve.errors import EXCEPTION_HANDLERS, ErrorBoundary
from kiln.serve.metrics import Metrics, MetricsMiddleware
from kiln.serve.models import load_embed_model
from kiln.serve.openai_routes import OpenAIAdapter
from kiln.serve.v2_rest import V2Adapter
from kiln.settings import Settings


def build_app(dataplane: DataPlane, settings: Settings, metrics: Metrics | None = None) -> Starlette:
    """An app over an already loaded dataplane (``create_app`` loads one from a bundle)."""
    metrics = metrics or Metrics()
    limit = settings.max_request_bytes

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dataplane.start()
        yield
        dataplane.drain()
        await anyio.to_thread.run_sync(dataplane.stop)

    app = Starlette(
        routes=[
            *V2Adapter(dataplane, limit).routes(),
            *OpenAIAdapter(dataplane, limit).routes(),
            Route("/metrics", metrics.endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(MetricsMiddleware, metrics=metrics), Middleware(ErrorBoundary)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.dataplane = dataplane
    app.state.metrics = metrics
    app.state.settings = settings
    return app


def create_app(bundle: Bundle, settings: Settings) -> Starlette:
    """Load the bundle's model (with one warm-up batch) and return the app that serves it."""
    metrics = Metrics()
    dataplane = DataPlane(
        Limits.from_settings(settings),
        observer=metrics.observe_inference,
        batching=BatchConfig.from_settings(settings),
        queue_observer=metrics.observe_queue,
    )
    info, model = load_embed_model(bundle, threads=settings.threads)
    dataplane.add(info, model)
    return build_app(dataplane, settings, metrics)
