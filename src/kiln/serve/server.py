"""``kiln serve``: load a bundle and serve it with uvicorn (HTTP) and, when asked, gRPC beside it.

Both protocols run on one event loop over one ``DataPlane``: the gRPC server starts before uvicorn and
drains while uvicorn does, before the dataplane stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.serve.dataplane import DataPlane
from kiln.settings import Settings

if TYPE_CHECKING:
    import grpc.aio

log = logging.getLogger("kiln.serve")
STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot start
GRACEFUL_SHUTDOWN_S = 10


def _configure_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class Servers(uvicorn.Server):
    """uvicorn plus, when ``grpc_port`` is given, a gRPC server on the same event loop and dataplane."""

    def __init__(
        self,
        config: uvicorn.Config,
        dataplane: DataPlane,
        grpc_port: int | None = None,
        max_message_bytes: int = Settings.max_request_bytes,
    ) -> None:
        super().__init__(config)
        self.dataplane = dataplane
        self.grpc_port = grpc_port
        self.grpc_bound: int | None = None
        self.max_message_bytes = max_message_bytes
        self._grpc: grpc.aio.Server | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if self.grpc_port is not None:
            await self._start_grpc(self.grpc_port)
        try:
            await super().startup(sockets)
        except BaseException:  # uvicorn exits when it cannot bind: stop gRPC first
            await self._stop_grpc(grace=None)
            raise

    async def _start_grpc(self, port: int) -> None:
        from kiln.serve.grpc.service import address, bind, create_grpc_server

        server = create_grpc_server(self.dataplane, self.max_message_bytes)
        try:
            self.grpc_bound = bind(server, self.config.host, port)
        except OSError as exc:
            log.error("%s", exc)
            sys.exit(STARTUP_FAILURE)
        await server.start()
        self._grpc = server
        where = address(self.config.host, self.grpc_bound)
        log.info("  Open Inference Protocol v2 gRPC: %s (inference.GRPCInferenceService)", where)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        stopping = asyncio.ensure_future(self._stop_grpc(grace=float(GRACEFUL_SHUTDOWN_S)))
        try:
            await super().shutdown(sockets)
        finally:
            await stopping

    async def _stop_grpc(self, grace: float | None) -> None:
        server, self._grpc = self._grpc, None
        if server is not None:
            await server.stop(grace)


def run_server(
    bundle_dir: Path, host: str = "127.0.0.1", port: int = 8000, grpc_port: int | None = None
) -> None:
    """Verify and load the bundle, then serve it until interrupted (SIGINT / SIGTERM).

    ``grpc_port``: also serve the Open Inference Protocol over gRPC on that port (0: any free port);
    ``None`` (the default) serves HTTP only.
    """
    _configure_logging()
    settings = Settings.from_env()
    bundle = load_bundle(Path(bundle_dir))
    app = create_app(bundle, settings)
    name = bundle.manifest.model_name
    url = base_url(host, port)
    log.info("serving model %r (variant %s) from %s at %s", name, bundle.manifest.chosen, bundle.root, url)
    log.info("  Open Inference Protocol v2: POST %s/v2/models/%s/infer", url, name)
    log.info("  OpenAI-compatible:          POST %s/v1/embeddings", url)
    log.info("  health: %s/v2/health/ready   metrics: %s/metrics", url, url)
    if grpc_port is None:
        uvicorn.run(
            app, host=host, port=port, log_level="info", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
        )
        return
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
    )
    server = Servers(config, app.state.dataplane, grpc_port, settings.max_request_bytes)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
