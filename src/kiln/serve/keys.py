"""API keys: the keys file, salted hashes, scopes, and verification in constant time.

A key looks like ``kiln-<lookup>-<secret>``: ``lookup`` (8 hex digits) finds the record without trying every
one, ``secret`` is 32 random bytes (URL-safe base64). The file stores only a salted PBKDF2-HMAC-SHA256 hash
of the whole key (per-key random salt, the iteration count kept with it); verification recomputes it and
compares with ``hmac.compare_digest``. A key is shown once, when ``kiln keys add`` makes it.

The keys file is JSON, or TOML when its name ends in ``.toml``::

    {"version": 1, "keys": [{"id": "alice", "lookup": "…", "algorithm": "pbkdf2_sha256",
      "iterations": 100000, "salt": "<hex>", "hash": "<hex>", "models": ["*"], "routes": ["infer"],
      "admin": false, "rate": 10.0, "burst": 20, "created": "2024-01-02T03:04:05Z"}]}

Scopes: ``models`` lists the served model names a key may use (``*``: all); ``routes`` the route groups it
may call: ``infer`` (v2 infer, OpenAI embeddings, gRPC ModelInfer), ``metadata`` (server and model
metadata, model readiness, model lists) and ``metrics`` (``GET /metrics``); ``*``: all of them. ``admin``
keys pass every scope check, and only they may call ``admin`` routes (the model repository). ``rate``
(requests per second) and ``burst`` set the key's token bucket; no ``rate``: no limit.
Server health (live / ready) never needs a key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiln.errors import KeysFileError

ALL = "*"
ROUTE_SCOPES = ("infer", "metadata", "metrics")
ADMIN_ROUTES = "admin"
"""The model repository's route group: only ``admin`` keys may call it."""
ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 100_000
"""PBKDF2 rounds for new keys (about 50 ms once per key and process: verified keys are remembered)."""
KEY_PREFIX = "kiln"
MAX_KEY_CHARS = 256
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_LOOKUP = re.compile(r"^[0-9a-f]{8}$")
_CACHE_SIZE = 4096


@dataclass(frozen=True)
class ApiKey:
    """One stored key: its id, the salted hash of the secret, scopes and rate limit (never the key)."""

    id: str
    lookup: str
    salt: str
    hash: str
    iterations: int = ITERATIONS
    algorithm: str = ALGORITHM
    models: tuple[str, ...] = (ALL,)
    routes: tuple[str, ...] = (ALL,)
    admin: bool = False
    rate: float | None = None
    burst: int | None = None
    created: str = ""

    def allows_route(self, route: str) -> bool:
        if route == ADMIN_ROUTES:
            return self.admin
        return self.admin or ALL in self.routes or route in self.routes

    def allows_model(self, model: str) -> bool:
        return self.admin or ALL in self.models or model in self.models

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "lookup": self.lookup,
            "algorithm": self.algorithm,
            "iterations": self.iterations,
            "salt": self.salt,
            "hash": self.hash,
            "models": list(self.models),
            "routes": list(self.routes),
            "admin": self.admin,
            "rate": self.rate,
            "burst": self.burst,
            "created": self.created,
        }
        return {k: v for k, v in doc.items() if v is not None}


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    lookup: str = Field(pattern=_LOOKUP.pattern)
    algorithm: Literal["pbkdf2_sha256"] = "pbkdf2_sha256"
    iterations: int = Field(default=ITERATIONS, ge=1)
    salt: str = Field(pattern=r"^[0-9a-f]{16,}$")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: list[str] = Field(default_factory=lambda: [ALL], min_length=1)
    routes: list[str] = Field(default_factory=lambda: [ALL], min_length=1)
    admin: bool = False
    rate: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=1)
    created: str = ""

    @field_validator("routes")
    @classmethod
    def _known_routes(cls, routes: list[str]) -> list[str]:
        unknown = [r for r in routes if r != ALL and r not in ROUTE_SCOPES]
        if unknown:
            raise ValueError(f"unknown route scope {unknown[0]!r} (use {', '.join(ROUTE_SCOPES)} or *)")
        return routes


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    keys: list[_Entry] = Field(default_factory=list)


def hash_key(key: str, salt: str, iterations: int) -> str:
    """The hex PBKDF2-HMAC-SHA256 of ``key`` with the hex ``salt``."""
    digest = hashlib.pbkdf2_hmac("sha256", key.encode("utf-8"), bytes.fromhex(salt), iterations)
    return digest.hex()


def lookup_of(key: str) -> str | None:
    """The lookup part of a key shaped like ``kiln-<lookup>-<secret>``, else ``None``."""
    parts = key.split("-", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not _LOOKUP.match(parts[1]) or not parts[2]:
        return None
    return parts[1]


def parse_scope_list(text: str, what: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``; ``"*"`` -> ``("*",)``; ``ValueError`` naming ``what`` if wrong."""
    items = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not items:
        raise ValueError(f"{what}: give a comma-separated list or *")
    if ALL in items:
        return (ALL,)
    if allowed is not None:
        unknown = [i for i in items if i not in allowed]
        if unknown:
            raise ValueError(f"{what}: unknown {unknown[0]!r} (use {', '.join(allowed)} or *)")
    return items


def new_key(
    key_id: str,
    *,
    models: Iterable[str] = (ALL,),
    routes: Iterable[str] = (ALL,),
    admin: bool = False,
    rate: float | None = None,
    burst: int | None = None,
    iterations: int = ITERATIONS,
) -> tuple[str, ApiKey]:
    """A fresh random key and its record (the record holds only the salted hash)."""
    if not re.match(ID_PATTERN, key_id):
        raise ValueError(f"key id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-'")
    lookup = secrets.token_hex(4)
    key = f"{KEY_PREFIX}-{lookup}-{secrets.token_urlsafe(32)}"
    salt = secrets.token_hex(16)
    record = ApiKey(
        id=key_id,
        lookup=lookup,
        salt=salt,
        hash=hash_key(key, salt, iterations),
        iterations=iterations,
        models=tuple(models),
        routes=tuple(routes),
        admin=admin,
        rate=rate,
        burst=burst,
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    return key, record


# --- the keys file ---------------------------------------------------------------------------------------


def _is_toml(path: Path) -> bool:
    return path.suffix.lower() == ".toml"


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeysFileError(f"API keys file {path} is not valid JSON: {exc}") from None


def _parse_toml(path: Path, text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise KeysFileError(f"API keys file {path}: TOML needs Python 3.11+; use a .json file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeysFileError(f"API keys file {path} is not valid TOML: {exc}") from None


def load_keys(path: Path) -> list[ApiKey]:
    """The records of a keys file; ``KeysFileError`` saying what is wrong if it cannot be used."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeysFileError(
            f"API keys file {path} does not exist: create it with `kiln keys add {path} --id NAME`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"cannot read API keys file {path}: {exc}") from None
    doc = _parse_toml(path, text) if _is_toml(path) else _parse_json(path, text)
    try:
        parsed = _File.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        raise KeysFileError(f"API keys file {path}: {where}: {first['msg']}") from None
    seen: set[str] = set()
    for entry in parsed.keys:
        if entry.id in seen:
            raise KeysFileError(f"API keys file {path}: key id {entry.id!r} appears more than once")
        seen.add(entry.id)
    return [
        ApiKey(**{**e.model_dump(), "models": tuple(e.models), "routes": tuple(e.routes)})
        for e in parsed.keys
    ]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _dumps(path: Path, keys: Sequence[ApiKey]) -> str:
    if not _is_toml(path):
        return json.dumps({"version": 1, "keys": [k.to_dict() for k in keys]}, indent=2) + "\n"
    lines = ["# kiln API keys: salted hashes only (kiln keys add / list / revoke)", "version = 1"]
    for key in keys:
        lines += ["", "[[keys]]", *(f"{k} = {_toml_value(v)}" for k, v in key.to_dict().items())]
    return "\n".join(lines) + "\n"


def save_keys(path: Path, keys: Sequence[ApiKey]) -> None:
    """Write the keys file atomically, readable by its owner only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_dumps(path, keys))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KeysFileError(f"cannot write API keys file {path}: {exc}") from None


def add_key(path: Path, key_id: str, **options: Any) -> tuple[str, ApiKey]:
    """Make a key, add its record to ``path`` (created if missing) and return ``(key, record)``."""
    path = Path(path)
    keys = load_keys(path) if path.exists() else []
    if any(k.id == key_id for k in keys):
        raise KeysFileError(
            f"API keys file {path} already has a key {key_id!r}: revoke it or pick another id"
        )
    try:
        key, record = new_key(key_id, **options)
    except ValueError as exc:
        raise KeysFileError(f"{exc}") from None
    save_keys(path, [*keys, record])
    return key, record


def revoke_key(path: Path, key_id: str) -> ApiKey:
    """Remove the key ``key_id`` from ``path``; the removed record. A running server stops accepting the key
    once it reloads the file (when it sees the change, or on SIGHUP: see ``kiln.serve.auth``)."""
    keys = load_keys(path)
    kept = [k for k in keys if k.id != key_id]
    if len(kept) == len(keys):
        known = ", ".join(k.id for k in keys) or "none"
        raise KeysFileError(f"API keys file {path} has no key {key_id!r} (ids: {known})")
    save_keys(path, kept)
    return next(k for k in keys if k.id == key_id)


# --- verification ----------------------------------------------------------------------------------------


@dataclass
class KeyStore:
    """The keys a server accepts. ``verify`` is slow (PBKDF2) on a key's first use, then remembered."""

    keys: tuple[ApiKey, ...]
    _by_lookup: dict[str, list[ApiKey]] = field(init=False, repr=False)
    _verified: dict[bytes, ApiKey] = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False)
    _dummy: ApiKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = tuple(self.keys)
        self._by_lookup = {}
        for key in self.keys:
            self._by_lookup.setdefault(key.lookup, []).append(key)
        self._verified = {}
        self._lock = threading.Lock()
        salt = secrets.token_hex(16)
        self._dummy = ApiKey(id="", lookup="", salt=salt, hash="0" * 64)

    @classmethod
    def from_file(cls, path: Path) -> KeyStore:
        return cls(tuple(load_keys(path)))

    @staticmethod
    def _fingerprint(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()

    def cached(self, key: str) -> ApiKey | None:
        """The record of a key verified before (fast; no PBKDF2), else ``None``."""
        with self._lock:
            return self._verified.get(self._fingerprint(key))

    def verify(self, key: str) -> ApiKey | None:
        """The record ``key`` belongs to, else ``None``; one PBKDF2 per call whether it matches or not."""
        if len(key) > MAX_KEY_CHARS:
            return None
        lookup = lookup_of(key)
        candidates = self._by_lookup.get(lookup, []) if lookup else []
        found: ApiKey | None = None
        for record in candidates or [self._dummy]:  # unknown keys cost the same hashing as known ones
            expected = record.hash.encode("ascii")
            if hmac.compare_digest(hash_key(key, record.salt, record.iterations).encode("ascii"), expected):
                found = found or record
        if found is not None and found is not self._dummy:
            with self._lock:
                if len(self._verified) >= _CACHE_SIZE:
                    self._verified.clear()
                self._verified[self._fingerprint(key)] = found
            return found
        return None
