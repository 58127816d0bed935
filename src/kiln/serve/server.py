"""``kiln serve``: load a bundle and serve it with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.settings import Settings

log = logging.getLogger("kiln.serve")


def _configure_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def run_server(bundle_dir: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Verify and load the bundle, then serve it until interrupted (SIGINT / SIGTERM)."""
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
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
