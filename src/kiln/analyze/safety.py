"""Scan every file of a model folder that could run code or read outside the folder when loaded, and refuse
to load a model with findings the user has not named.

The scanning itself lives in :mod:`kiln.sources.scan` (files told by content: pickles, zips, tars, npy,
compressed streams, safetensors headers, ONNX external data); this module is what ``inspect`` and ``build``
call.

    scan_folder(root, notes)          SafetyFinding list for every file under ``root``
    refuse_unsafe(facts, allow=())    raise UnsafeFileError unless every finding's id is in ``allow``
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from kiln.analyze.facts import ModelFacts
from kiln.errors import UnsafeFileError
from kiln.sources.findings import SafetyFinding, refusal_message
from kiln.sources.scan import MAX_FILES
from kiln.sources.scan import scan_folder as _scan_folder

__all__ = ["MAX_FILES", "refuse_unsafe", "scan_folder"]


def scan_folder(root: Path, notes: list[str]) -> list[SafetyFinding]:
    """Safety findings for every file under ``root`` (names relative to ``root``)."""
    return _scan_folder(root, notes)


def refuse_unsafe(facts: ModelFacts, allow: Collection[str] = ()) -> list[SafetyFinding]:
    """Raise :class:`UnsafeFileError` when ``facts`` has findings whose id is not in ``allow``.

    Returns the findings the user allowed (to record in the manifest), or [] when there were none.
    """
    left = facts.unsafe(allow)
    if left:
        raise UnsafeFileError(refusal_message(facts.path, left))
    return list(facts.safety_findings)
