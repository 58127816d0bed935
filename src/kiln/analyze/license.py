"""Which license a model says it has, and what kind of license that is.

The license is read from the model card's YAML front matter (``README.md``: ``license:``, or ``license_name:``
when the license is ``other``), else from ``config.json``'s ``license``. The class comes from a small table
of Hugging Face license ids; anything not in it is "unknown", which a user must check by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kiln.analyze.facts import LicenseClass

_MAX_CARD_BYTES = 4 << 20

_PERMISSIVE = frozenset(
    {
        "apache-2.0",
        "apache 2.0",
        "apache2",
        "apache-2",
        "mit",
        "isc",
        "unlicense",
        "cc0-1.0",
        "cc-by-2.0",
        "cc-by-2.5",
        "cc-by-3.0",
        "cc-by-4.0",
        "zlib",
        "bsl-1.0",
        "postgresql",
        "wtfpl",
        "afl-3.0",
        "ecl-2.0",
        "ms-pl",
        "ncsa",
        "ofl-1.1",
        "artistic-2.0",
        "pddl",
        "odc-by",
        "cdla-permissive-1.0",
        "cdla-permissive-2.0",
        "upl-1.0",
    }
)
_PERMISSIVE_PREFIXES = ("bsd",)
_COPYLEFT_PREFIXES = (
    "gpl",
    "agpl",
    "lgpl",
    "cc-by-sa",
    "mpl",
    "epl",
    "eupl",
    "osl",
    "cdla-sharing",
    "odbl",
    "gfdl",
)
_NON_COMMERCIAL_MARKERS = ("-nc", "noncommercial", "non-commercial", "research-only", "research")
_RESTRICTED_PREFIXES = (
    "llama",
    "gemma",
    "openrail",
    "creativeml-openrail",
    "bigscience-openrail",
    "bigscience-bloom-rail",
    "bigcode-openrail",
    "deepfloyd",
    "cc-by-nd",
    "apple-",
    "qwen",
    "tongyi",
    "deepseek",
    "falcon",
    "nvidia-open-model",
)
# most restrictive first: a model under several licenses is held to the strictest
_SEVERITY: tuple[LicenseClass, ...] = ("non-commercial", "restricted", "copyleft", "unknown", "permissive")


def _classify_one(lic: str) -> LicenseClass:
    key = lic.strip().lower()
    if not key or key in ("unknown", "other", "none"):
        return "unknown"
    if key in _PERMISSIVE or key.startswith(_PERMISSIVE_PREFIXES):
        return "permissive"
    if any(m in key for m in _NON_COMMERCIAL_MARKERS):
        return "non-commercial"
    if key.startswith(_COPYLEFT_PREFIXES):
        return "copyleft"
    if key.startswith(_RESTRICTED_PREFIXES):
        return "restricted"
    return "unknown"


def classify_license(license_id: str | None) -> LicenseClass:
    """permissive / copyleft / non-commercial / restricted / unknown for a license id ("a, b": several)."""
    if not license_id:
        return "unknown"
    classes = {
        _classify_one(part) for part in re.split(r"\s*,\s*|\s+(?:or|and|OR|AND)\s+", license_id) if part
    }
    for cls in _SEVERITY:
        if cls in classes:
            return cls
    return "unknown"


def _front_matter(text: str) -> str | None:
    text = text.lstrip("\ufeff")
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            return "\n".join(lines[1:i])
    return None


def _as_license(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list):
        parts = [str(v).strip() for v in value if str(v).strip()]
        return ", ".join(parts) or None
    return None


def license_from_card(text: str) -> str | None:
    """The ``license`` of a model card's YAML front matter; ``license_name`` when the license is "other"."""
    block = _front_matter(text)
    if block is None:
        return None
    data: object = None
    try:
        import yaml

        data = yaml.safe_load(block)
    except Exception:  # no PyYAML, or YAML the card's author got wrong: fall back to a line match
        data = None
    if isinstance(data, dict):
        lic = _as_license(data.get("license"))
        name = _as_license(data.get("license_name"))
        if lic is not None and lic.lower() == "other" and name:
            return name
        return lic
    m = re.search(r"^license:\s*[\"']?([^\s\"'#]+)", block, flags=re.MULTILINE)
    return m.group(1) if m else None


def read_license(folder: Path) -> str | None:
    """The license a model folder declares (model card first, then config.json), or None."""
    card = folder / "README.md"
    if card.is_file() and card.stat().st_size <= _MAX_CARD_BYTES:
        lic = license_from_card(card.read_text(encoding="utf-8", errors="replace"))
        if lic:
            return lic
    config = folder / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if isinstance(data, dict):
            return _as_license(data.get("license"))
    return None
