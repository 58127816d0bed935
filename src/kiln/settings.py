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


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a yes/no value (use 1 or 0)")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return value


TEXT_OVERFLOW = ("truncate", "reject")


def _str(name: str) -> str | None:
    raw = os.environ.get(name)
    return raw if raw else None


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
    ``KILN_ORT_SPINNING``       ONNX Runtime's idle worker threads spin between operators (1, default)
                                or sleep (0). Sleeping threads wake late: on 2 cores a one-text request
                                took +2.1 to +3.2 ms over raw ORT with 0, +0.5 to +1.5 ms with 1, for
                                no more throughput at concurrency 32 (benchmarks/serve_throughput.py,
                                lean client; docs/serve-validation.md)
    ``KILN_MAX_BATCH_ITEMS``    most texts one request may carry
    ``KILN_MAX_REQUEST_BYTES``  largest request body the server accepts
    ``KILN_MAX_TEXT_CHARS``     longest single text accepted (characters; a longer one is refused)
    ``KILN_MAX_IMAGE_PIXELS``   largest image (width x height of its first frame) an image model decodes;
                                a larger one is refused (413) before its pixels are decoded (default 25M)
    ``KILN_TEXT_OVERFLOW``      a text of more tokens than the model's max length: ``truncate`` (default: the
                                model reads its first max-length tokens) or ``reject`` (400)
    ``KILN_MAX_BATCH_SIZE``     most texts (from any number of requests) in one model call
    ``KILN_MAX_WAIT_MS``        longest a text waits for its batch to fill (milliseconds)
    ``KILN_MAX_QUEUE``          most texts waiting per model; past it requests get 429 + Retry-After
    ``KILN_API_KEYS``           API keys file (``kiln keys add``); when set, every route but health needs
                                a key (default: unset, no keys; ``kiln serve --api-keys`` overrides it)
    ``KILN_API_KEYS_RELOAD_S``  how often the server checks the keys file for changes (seconds; 0: only on
                                SIGHUP; default 2)
    ``KILN_ACCESS_LOG``         1: one JSON access-log line per request on stdout (default); 0: none
    ``KILN_MONITOR``            1/0: keep the request log (``from_env`` default 1, so ``kiln serve`` logs;
                                a ``Settings()`` built in code logs nothing unless ``monitor=True``)
    ``KILN_MONITOR_DB``         request log database URL (default SQLite at ``KILN_HOME/monitor/<model>.db``;
                                e.g. ``postgresql+psycopg://user@host:5432/db``)
    ``KILN_MONITOR_SAMPLE``     fraction of requests (0..1) whose inputs and outputs are summarised
    ``KILN_MONITOR_KEEP_TEXT``  1: keep sampled texts verbatim; 0 (default): sha256 and length only
    ``KILN_MONITOR_RETENTION_DAYS``  delete request-log rows older than this many days (0 = keep all)
    ``KILN_MONITOR_QUEUE``      most requests waiting for the log writer; past it they are dropped (counted)
    ``KILN_MONITOR_WINDOW``     window of the dashboard, drift tests and alerts (``15m``, ``1h``, ``1d``)
    ``KILN_MONITOR_ALERT_WEBHOOK``      URL that gets each alert as a JSON POST (default: alerts only logged)
    ``KILN_MONITOR_ALERT_AFTER``        complete windows over the line in a row before an alert fires (3)
    ``KILN_MONITOR_ALERT_CLEAR_AFTER``  complete windows under the line in a row before it clears (3)
    ``KILN_MONITOR_MAX_ACCURACY_DROP``  quality alert line: reference accuracy minus this (0.05)
    """

    home: Path = field(default_factory=_default_home)
    threads: int = 0
    ort_spinning: bool = True
    max_batch_items: int = 256
    max_request_bytes: int = 8 * 1024 * 1024
    max_text_chars: int = 100_000
    max_image_pixels: int = 25_000_000
    text_overflow: str = "truncate"
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    api_keys: Path | None = None
    api_keys_reload_s: float = 2.0
    access_log: bool = True
    monitor: bool = False
    monitor_db: str | None = None
    monitor_sample: float = 0.1
    monitor_keep_text: bool = False
    monitor_retention_days: int = 30
    monitor_queue: int = 10_000
    monitor_window: str = "1h"
    monitor_alert_webhook: str | None = None
    monitor_alert_after: int = 3
    monitor_alert_clear_after: int = 3
    monitor_max_accuracy_drop: float = 0.05

    @property
    def bundles_dir(self) -> Path:
        return self.home / "bundles"

    @classmethod
    def from_env(cls) -> Settings:
        home = os.environ.get("KILN_HOME")
        return cls(
            home=Path(home).expanduser() if home else _default_home(),
            threads=_int("KILN_THREADS", 0),
            ort_spinning=_bool("KILN_ORT_SPINNING", True),
            max_batch_items=_int("KILN_MAX_BATCH_ITEMS", 256),
            max_request_bytes=_int("KILN_MAX_REQUEST_BYTES", 8 * 1024 * 1024),
            max_text_chars=_int("KILN_MAX_TEXT_CHARS", 100_000),
            max_image_pixels=_int("KILN_MAX_IMAGE_PIXELS", 25_000_000),
            text_overflow=_choice("KILN_TEXT_OVERFLOW", "truncate", TEXT_OVERFLOW),
            max_batch_size=_int("KILN_MAX_BATCH_SIZE", 32),
            max_wait_ms=_float("KILN_MAX_WAIT_MS", 2.0),
            max_queue=_int("KILN_MAX_QUEUE", 1024),
            api_keys=Path(keys).expanduser() if (keys := _str("KILN_API_KEYS")) else None,
            api_keys_reload_s=_float("KILN_API_KEYS_RELOAD_S", 2.0),
            access_log=_bool("KILN_ACCESS_LOG", True),
            monitor=_bool("KILN_MONITOR", True),
            monitor_db=_str("KILN_MONITOR_DB"),
            monitor_sample=_float("KILN_MONITOR_SAMPLE", 0.1),
            monitor_keep_text=_bool("KILN_MONITOR_KEEP_TEXT", False),
            monitor_retention_days=_int("KILN_MONITOR_RETENTION_DAYS", 30),
            monitor_queue=_int("KILN_MONITOR_QUEUE", 10_000),
            monitor_window=_str("KILN_MONITOR_WINDOW") or "1h",
            monitor_alert_webhook=_str("KILN_MONITOR_ALERT_WEBHOOK"),
            monitor_alert_after=_int("KILN_MONITOR_ALERT_AFTER", 3),
            monitor_alert_clear_after=_int("KILN_MONITOR_ALERT_CLEAR_AFTER", 3),
            monitor_max_accuracy_drop=_float("KILN_MONITOR_MAX_ACCURACY_DROP", 0.05),
        )
