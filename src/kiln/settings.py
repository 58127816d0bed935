"""The only place kiln reads environment variables (all prefixed ``KILN_``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not an integer") from exc


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not a number") from exc


def _default_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "kiln"


@dataclass(frozen=True)
class Settings:
    """Knobs a deployment sets through the environment.

    ``KILN_HOME``               cache for built bundles and build scratch space
                                (default ``$XDG_CACHE_HOME/kiln``, else ``~/.cache/kiln``)
    ``KILN_THREADS``            intra-op threads for ONNX Runtime (0 = all cores)
    ``KILN_MAX_BATCH_ITEMS``    most texts one request may carry
    ``KILN_MAX_REQUEST_BYTES``  largest request body the server accepts
    ``KILN_MAX_TEXT_CHARS``     longest single text accepted
    ``KILN_MAX_BATCH_SIZE``     most texts (from any number of requests) in one model call
    ``KILN_MAX_WAIT_MS``        longest a text waits for its batch to fill (milliseconds)
    ``KILN_MAX_QUEUE``          most texts waiting per model; past it requests get 429 + Retry-After
    """

    home: Path = field(default_factory=_default_home)
    threads: int = 0
    max_batch_items: int = 256
    max_request_bytes: int = 8 * 1024 * 1024
    max_text_chars: int = 100_000
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024

    @property
    def bundles_dir(self) -> Path:
        return self.home / "bundles"

    @classmethod
    def from_env(cls) -> Settings:
        home = os.environ.get("KILN_HOME")
        return cls(
            home=Path(home).expanduser() if home else _default_home(),
            threads=_int("KILN_THREADS", 0),
            max_batch_items=_int("KILN_MAX_BATCH_ITEMS", 256),
            max_request_bytes=_int("KILN_MAX_REQUEST_BYTES", 8 * 1024 * 1024),
            max_text_chars=_int("KILN_MAX_TEXT_CHARS", 100_000),
            max_batch_size=_int("KILN_MAX_BATCH_SIZE", 32),
            max_wait_ms=_float("KILN_MAX_WAIT_MS", 2.0),
            max_queue=_int("KILN_MAX_QUEUE", 1024),
        )
