"""API-key authentication, scopes and per-key rate limits, for REST and gRPC alike.

Clients send a key as ``Authorization: Bearer KEY`` (what the openai client sends) or ``X-API-Key: KEY``;
over gRPC as metadata ``authorization: Bearer KEY`` or ``x-api-key: KEY``. With keys configured every route
needs one except server health (``/v2/health/live``, ``/v2/health/ready``, gRPC ServerLive / ServerReady):

    no key, or an unknown one           AuthError         401 / UNAUTHENTICATED
    the key's routes or models lack it  ForbiddenError    403 / PERMISSION_DENIED
    the key is over its rate            RateLimitedError  429 + Retry-After / RESOURCE_EXHAUSTED

Route groups (a key's ``routes``):

    infer      v2 infer, ``/v1/embeddings``, ``/v1/classify``, ``/v1/images/classify``, ``/v1/feedback``,
               gRPC ModelInfer
    metadata   server and model metadata, model readiness, ``/v1/models`` (it lists every served model);
               paths kiln does not serve fall here too, so a caller without a key learns nothing from a 404
    metrics    ``GET /metrics``, ``/dashboard`` and the request-log routes under ``/v2/monitor/``: they name
               every model and its traffic, so they need a key scoped for them (or an admin key)
    admin      the model repository (``/v2/repository/...``) and gRPC methods not in ``GRPC_ROUTES``:
               admin keys only (``routes = ["*"]`` is not enough)

Model scopes are checked against the served model's canonical name once the adapter has resolved it
(:func:`authorize_model`), so an alias cannot get around them.

Reload without restart: :meth:`Guard.reload_if_changed` (the app polls it every ``KILN_API_KEYS_RELOAD_S``)
and :meth:`Guard.reload` (``kiln serve`` calls it on SIGHUP) read the keys file again; added keys work and
revoked ones stop working from the next request. A file that cannot be used (deleted, half-written,
invalid) is refused with an error in the log, and the server keeps the keys it had.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from kiln.errors import AuthError, ForbiddenError, KeysFileError, RateLimitedError, RequestError
from kiln.serve.access_log import KEY_ID_KEY
from kiln.serve.errors import error_response, headers_for, status_for
from kiln.serve.keys import ADMIN_ROUTES, ApiKey, KeyStore
from kiln.serve.ratelimit import RateLimiter, default_burst

log = logging.getLogger("kiln.serve")

KEY_KEY = "kiln_api_key"
"""``request.state`` attribute holding the authenticated :class:`ApiKey` (only when keys are configured)."""
_GUARD_KEY = "kiln_guard"
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
ADMIN_PATH_PREFIX = "/v2/repository/"
MONITOR_PATH_PREFIX = "/v2/monitor/"
"""Same as ``v2_rest.ADMIN_PATH_PREFIX`` (not imported: v2_rest imports this module)."""
DASHBOARD_PATH = "/dashboard"
"""Same as ``dashboard.DASHBOARD_PATH``: the monitor's HTML view, a ``metrics`` route."""
FEEDBACK_PATH = "/v1/feedback"
"""Same as ``feedback.PATH`` (not imported: feedback imports this module): an ``infer`` route."""
INFER_PATHS = frozenset({"/v1/embeddings", "/v1/classify", "/v1/images/classify", FEEDBACK_PATH})
"""The ``infer`` routes besides v2 infer (``image_routes.PATH`` and the others; not imported: they import
this module)."""
GRPC_ROUTES: dict[str, str | None] = {
    "ServerLive": None,
    "ServerReady": None,
    "ServerMetadata": "metadata",
    "ModelReady": "metadata",
    "ModelMetadata": "metadata",
    "ModelInfer": "infer",
}
"""Route group of each gRPC method (``None``: open)."""
_INFER_PATH = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer$")
_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)
MISSING_KEY = (
    "this server requires an API key: send it as `Authorization: Bearer KEY` or `X-API-Key: KEY` "
    "(gRPC: metadata `authorization: Bearer KEY` or `x-api-key: KEY`)"
)
INVALID_KEY = "invalid API key: it is not one this server knows (was it revoked, or mistyped?)"


def http_route_group(path: str) -> str | None:
    """The route group an HTTP path belongs to; ``None`` for the open health routes."""
    if path in OPEN_PATHS:
        return None
    if path in ("/metrics", DASHBOARD_PATH) or path.startswith(MONITOR_PATH_PREFIX):
        return "metrics"
    if path.startswith(ADMIN_PATH_PREFIX):
        return ADMIN_ROUTES
    if path in INFER_PATHS or _INFER_PATH.match(path):
        return "infer"
    return "metadata"


def key_from(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` first, then ``X-API-Key``."""
    if authorization:
        match = _BEARER.match(authorization)
        if match:
            return match.group(1)
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return None


def key_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The key in gRPC invocation metadata (``authorization: Bearer KEY`` or ``x-api-key``)."""
    values: dict[str, str] = {}
    for name, value in metadata or ():
        if isinstance(value, bytes):
            continue  # binary (-bin) metadata never carries a key
        values.setdefault(name.lower(), value)
    return key_from(values.get("authorization"), values.get("x-api-key"))


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it can be reached from elsewhere


def exposure_warning(host: str, has_keys: bool) -> str | None:
    """The loud warning for serving a non-loopback address with no API keys, else ``None``."""
    if has_keys or is_loopback(host):
        return None
    bar = "!" * 78
    return (
        f"{bar}\n"
        f"!! kiln is serving on {host}, which other machines can reach, WITHOUT API KEYS:\n"
        "!! anyone who can connect can run inference. Create keys with `kiln keys add FILE --id NAME`\n"
        "!! and serve with `--api-keys FILE` (or KILN_API_KEYS), or bind 127.0.0.1.\n"
        f"{bar}"
    )


FileStamp = tuple[int, int, int] | None
"""(inode, size, modification time in ns) of a file; ``None`` when it cannot be read."""


def file_stamp(path: Path) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Guard:
    """Checks a presented key: authenticates it, checks its scopes, takes a token from its bucket.

    ``path``: the keys file ``store`` was read from, for :meth:`reload` / :meth:`reload_if_changed`.
    """

    def __init__(self, store: KeyStore, limiter: RateLimiter | None = None, path: Path | None = None) -> None:
        self.store = store
        self.limiter = limiter or RateLimiter()
        self.path = None if path is None else Path(path)
        self._stamp: FileStamp = None
        self._failed: list[FileStamp] = []  # the stamp of the last version that could not be used

    @classmethod
    def from_file(cls, path: Path) -> Guard:
        stamp = file_stamp(path)  # before reading: a change made while reading is seen next time
        guard = cls(KeyStore.from_file(path), path=path)
        guard._stamp = stamp
        return guard

    def reload(self) -> bool:
        """Read the keys file again and use its keys from the next request on. When the file cannot be
        used, log why and keep the current keys (a broken file never locks every client out, nor lets
        anyone in). True when the keys were replaced."""
        if self.path is None:
            return False
        stamp = file_stamp(self.path)
        if stamp is not None and stamp[1] == 0:
            # an empty file is one being rewritten in place (an editor, `>`, a copy): reading it now
            # would drop every key; the next check sees the finished file. To revoke every key,
            # `kiln keys revoke` each: that writes a file that says so.
            if self._failed != [stamp]:
                log.warning(
                    "API keys file %s is empty; the server keeps its %d keys until it holds keys again",
                    self.path,
                    len(self.store.keys),
                )
            self._failed = [stamp]
            return False
        try:
            store = KeyStore.from_file(self.path)
        except KeysFileError as exc:
            if self._failed != [stamp]:  # once per broken version of the file, not at every check
                log.error(
                    "API keys not reloaded, the server keeps its %d keys: %s", len(self.store.keys), exc
                )
            self._failed = [stamp]
            return False
        self.store = store  # one reference swap: requests see the old keys or the new ones, never a mix
        self._stamp = stamp
        self._failed = []
        log.info("API keys reloaded from %s: %d keys", self.path, len(store.keys))
        return True

    def reload_if_changed(self) -> bool:
        """:meth:`reload` when the file changed (inode, size or mtime) since it was last read."""
        if self.path is None:
            return False
        stamp = file_stamp(self.path)
        if stamp == self._stamp or self._failed == [stamp]:
            return False
        return self.reload()

    async def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise AuthError(MISSING_KEY)
        key = self.store.cached(presented)
        if key is None:  # first use: PBKDF2 off the event loop
            key = await anyio.to_thread.run_sync(self.store.verify, presented)
        if key is None:
            raise AuthError(INVALID_KEY)
        return key

    def authorize_route(self, key: ApiKey, group: str) -> None:
        if not key.allows_route(group):
            raise ForbiddenError(
                f"API key {key.id!r} may not call {group} routes (its routes: {_list(key.routes)})"
            )

    def authorize_model(self, key: ApiKey, model: str) -> None:
        if not key.allows_model(model):
            raise ForbiddenError(
                f"API key {key.id!r} may not use model {model!r} (its models: {_list(key.models)})"
            )

    def admit(self, key: ApiKey) -> None:
        if key.rate is None:
            return
        wait = self.limiter.take(key.id, key.rate, key.burst or default_burst(key.rate))
        if wait > 0:
            raise RateLimitedError(
                f"API key {key.id!r} is over its rate limit; retry in {wait:.2f}s", math.ceil(wait)
            )


def _list(items: tuple[str, ...]) -> str:
    return ", ".join(items)


def authorize_model(request: Request, model: str) -> None:
    """Refuse (``ForbiddenError``) a model the request's API key is not scoped for; adapters call this.

    A no-op when the server has no keys (the auth middleware then leaves no key on the request).
    """
    state: dict[str, Any] = request.scope.get("state") or {}
    key = state.get(KEY_KEY)
    guard = state.get(_GUARD_KEY)
    if isinstance(key, ApiKey) and isinstance(guard, Guard):
        guard.authorize_model(key, model)


class AuthMiddleware:
    """ASGI middleware: every HTTP request but server health needs an API key in scope and under its rate."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        group = http_route_group(path)
        if group is None:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        headers = Headers(scope=scope)
        try:
            key = await self.guard.authenticate(
                key_from(headers.get("authorization"), headers.get("x-api-key"))
            )
            state[KEY_ID_KEY] = key.id
            self.guard.authorize_route(key, group)
            self.guard.admit(key)
        except RequestError as exc:
            response = error_response(path, status_for(exc), str(exc), headers=headers_for(exc))
            await response(scope, receive, send)
            return
        state[KEY_KEY] = key
        state[_GUARD_KEY] = self.guard
        await self.app(scope, receive, send)
