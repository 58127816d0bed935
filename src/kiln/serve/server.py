"""``kiln serve``: load a bundle and serve it with uvicorn (HTTP) and, when asked, gRPC beside it.

Both protocols run on one event loop over one ``DataPlane``: the gRPC server starts before uvicorn and
drains while uvicorn does, before the dataplane stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import logging.handlers
import queue
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from kiln.errors import ServeConfigError
from kiln.serve.access_log import ACCESS_LOGGER
from kiln.serve.app import create_repository_app
from kiln.serve.auth import Guard, exposure_warning
from kiln.serve.dataplane import DataPlane
from kiln.serve.repository import CanarySpec
from kiln.settings import Settings

if TYPE_CHECKING:
    import grpc.aio

    from kiln.serve.grpc.calls import CallObserver

log = logging.getLogger("kiln.serve")
STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot start
GRACEFUL_SHUTDOWN_S = 10


_access_listener: logging.handlers.QueueListener | None = None


class _Handoff(logging.handlers.QueueHandler):
    """Queues access records as they are: formatting and writing happen on the listener's thread (the
    records' messages are :class:`~kiln.serve.access_log.AccessLine` values, safe to format later)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def _configure_logging() -> logging.handlers.QueueListener | None:
    """kiln's own log handlers when the process has none: ``kiln.serve`` on stderr, the JSON access
    lines alone on stdout, written by a listener thread (returned: stop it to flush). Measured at
    concurrency 32 (py-spy): formatting and writing access lines took 8% of the event loop's thread."""
    global _access_listener
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
        access = logging.getLogger(ACCESS_LOGGER)  # JSON lines, alone on stdout
        access_handler = logging.StreamHandler(sys.stdout)
        access_handler.setFormatter(logging.Formatter("%(message)s"))
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        _access_listener = logging.handlers.QueueListener(records, access_handler)
        access.addHandler(_Handoff(records))
        access.propagate = False
    log.setLevel(logging.INFO)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)
    if _access_listener is not None and _access_listener._thread is None:  # noqa: SLF001 (a stopped one)
        _access_listener.start()
    return _access_listener


def base_url(host: str, port: int, scheme: str = "http") -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


TlsFiles = tuple[Path, Path]
"""(certificate, private key), PEM files."""


def check_tls(certfile: Path | None, keyfile: Path | None) -> TlsFiles | None:
    """Both files or neither; ``ServeConfigError`` if they are missing or do not make a usable pair."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise ServeConfigError("TLS needs both --ssl-certfile and --ssl-keyfile (PEM files)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(certfile), str(keyfile))
    except (OSError, ssl.SSLError) as exc:
        raise ServeConfigError(
            f"cannot use TLS certificate {certfile} with key {keyfile}: {exc} "
            "(both must be PEM files, the key unencrypted and matching the certificate)"
        ) from None
    return Path(certfile), Path(keyfile)


def _uvicorn_options(settings: Settings, tls: TlsFiles | None) -> dict[str, Any]:
    """TLS, and uvicorn's own access log only when kiln's JSON one is off."""
    options: dict[str, Any] = {"access_log": not settings.access_log}
    if tls is not None:
        options.update(ssl_certfile=str(tls[0]), ssl_keyfile=str(tls[1]))
    return options


class Servers(uvicorn.Server):
    """uvicorn plus, when ``grpc_port`` is given, a gRPC server on the same event loop and dataplane."""

    def __init__(
        self,
        config: uvicorn.Config,
        dataplane: DataPlane,
        grpc_port: int | None = None,
        max_message_bytes: int = Settings.max_request_bytes,
        guard: Guard | None = None,
        tls: TlsFiles | None = None,
        observer: CallObserver | None = None,
    ) -> None:
        super().__init__(config)
        self.dataplane = dataplane
        self.guard = guard
        self.observer = observer
        self.tls = tls
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
        from kiln.serve.grpc.service import address, bind, create_grpc_server, tls_credentials

        server = create_grpc_server(self.dataplane, self.max_message_bytes, self.guard, self.observer)
        credentials = tls_credentials(*self.tls) if self.tls is not None else None
        try:
            self.grpc_bound = bind(server, self.config.host, port, credentials)
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


def reload_keys_on_sighup(guard: Guard) -> bool:
    """``kill -HUP <pid>`` reloads the API keys file (in a thread: the event loop never waits for it).
    False where there is no SIGHUP (Windows) or this is not the main thread."""
    sighup = getattr(signal, "SIGHUP", None)
    if sighup is None or threading.current_thread() is not threading.main_thread():
        return False

    def on_sighup(signum: int, frame: object) -> None:
        threading.Thread(target=guard.reload, name="kiln-keys-reload", daemon=True).start()

    signal.signal(sighup, on_sighup)
    return True


def run_server(
    bundle_dir: Path | Sequence[Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int | None = None,
    canaries: Sequence[CanarySpec] = (),
    settings: Settings | None = None,
    api_keys: Path | None = None,
    ssl_certfile: Path | None = None,
    ssl_keyfile: Path | None = None,
) -> None:
    """Verify and load the bundles, then serve them until interrupted (SIGINT / SIGTERM).

    ``bundle_dir``: one or more bundle folders, versioned model folders (``name/1/``, ``name/2/``) or
    repository folders of those (see ``kiln.serve.repository``); ``canaries``: weighted traffic splits.
    ``grpc_port``: also serve the Open Inference Protocol over gRPC on that port (0: any free port);
    ``None`` (the default) serves HTTP only. SIGTERM stops accepting connections, lets the requests in
    flight finish (at most ``GRACEFUL_SHUTDOWN_S``), drains the batch queues, then exits.
    ``settings``: default ``Settings.from_env()``. ``api_keys``: the API keys file (overrides
    ``KILN_API_KEYS``); ``ssl_certfile`` / ``ssl_keyfile``: serve HTTPS (and gRPC over TLS).
    """
    listener = _configure_logging()
    try:
        _serve(bundle_dir, host, port, grpc_port, canaries, settings, api_keys, ssl_certfile, ssl_keyfile)
    finally:
        if listener is not None:  # every access line written before this returns (started again if
            listener.stop()  # the process serves once more)


def _serve(
    bundle_dir: Path | Sequence[Path],
    host: str,
    port: int,
    grpc_port: int | None,
    canaries: Sequence[CanarySpec],
    settings: Settings | None,
    api_keys: Path | None,
    ssl_certfile: Path | None,
    ssl_keyfile: Path | None,
) -> None:
    settings = settings or Settings.from_env()
    if api_keys is not None:
        settings = dataclasses.replace(settings, api_keys=Path(api_keys))
    tls = check_tls(ssl_certfile, ssl_keyfile)
    paths = [Path(bundle_dir)] if isinstance(bundle_dir, (str, Path)) else [Path(p) for p in bundle_dir]
    app = create_repository_app(paths, settings, canaries)
    url = base_url(host, port, "https" if tls is not None else "http")
    guard: Guard | None = app.state.guard
    warning = exposure_warning(host, guard is not None)
    if warning is not None:
        log.warning("\n%s", warning)
    dataplane: DataPlane = app.state.dataplane
    for info in dataplane.models():
        versions = ", ".join(info.versions)
        log.info("serving model %r version(s) %s (variant %s) at %s", info.name, versions, info.variant, url)
    name = dataplane.model_names[0]
    log.info("  Open Inference Protocol v2: POST %s/v2/models/%s/infer", url, name)
    log.info("  model repository (admin):   POST %s/v2/repository/index", url)
    log.info("  OpenAI-compatible:          POST %s/v1/embeddings", url)
    if any(i.task == "image-classify" for i in dataplane.models()):
        log.info("  image classification:       POST %s/v1/images/classify (multipart 'file' parts)", url)
    log.info("  health: %s/v2/health/ready   metrics: %s/metrics", url, url)
    if guard is not None:
        keys = len(guard.store.keys)
        log.info("  API keys: %d from %s (every route but health needs one)", keys, settings.api_keys)
        every = settings.api_keys_reload_s
        checked = f"when it changes (checked every {every:g} s) and on SIGHUP" if every > 0 else "on SIGHUP"
        log.info("            reloaded %s", checked)
        reload_keys_on_sighup(guard)
    if app.state.request_log is not None:
        stats = app.state.request_log.stats()
        texts = "kept" if stats["keep_text"] else "sha256 + length only"
        log.info("  request log: %s (sample %g, texts %s)", stats["store"], stats["sample"], texts)
        log.info("               %s/v2/monitor/stats", url)
    else:
        log.info("  request log: off")
    if grpc_port is None:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            **_uvicorn_options(settings, tls),
        )
        return
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        **_uvicorn_options(settings, tls),
    )
    from kiln.serve.grpc.calls import CallObserver

    observer = CallObserver(
        metrics=app.state.metrics,
        request_log=app.state.request_log,
        sample=settings.monitor_sample,
        access_log_enabled=settings.access_log,
    )
    server = Servers(config, app.state.dataplane, grpc_port, settings.max_request_bytes, guard, tls, observer)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
