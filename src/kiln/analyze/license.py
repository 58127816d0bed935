"""Which license a model says it has, what kind of license that is, and may it be used commercially.

The license is read from the model card's YAML front matter (``README.md``: ``license:``, or ``license_name:``
when the license is ``other``), else from a LICENSE file (told by its text), else from ``config.json``'s
``license``. Two answers come from it:

    classify_license(id)          permissive / copyleft / non-commercial / restricted / unknown
    license_verdict(folder|card)  LicenseVerdict: may it be used commercially -- "allowed", "conditional"
                                  (and on which conditions), "not-allowed" or "unknown" -- and where the
                                  license was read (``source``)

A card's ``base_model`` lineage counts too: a fine-tune of a Llama or Gemma model stays under its base
model's terms whatever its own card says, so those terms are added to the verdict. Several licenses joined
by "," or "and" (or a YAML list) must all be met (the strictest wins); "a OR b" lets the user pick (the most
permissive wins). Anything kiln does not know is "unknown": a person must read the license.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LicenseClass = Literal["permissive", "copyleft", "non-commercial", "restricted", "unknown"]
Verdict = Literal["allowed", "conditional", "not-allowed", "unknown"]

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


# --- commercial-use verdicts -----------------------------------------------------------------------------

CONDITIONS: dict[str, str] = {
    "notice": "keep the copyright and license notice with every copy you share",
    "state-changes": "say what you changed in files you modify and share",
    "attribution": "credit the authors and link the license wherever the model or its outputs are shared",
    "share-alike": "share the model and anything adapted from it under the same license",
    "source-disclosure": "whoever receives the model or a derivative must be offered its source, under the "
    "same license",
    "network-use": "users who interact with the model over a network (an API) must be offered its source",
    "weak-copyleft": "changes to the licensed files themselves must be shared under the same license",
    "non-commercial": "commercial use is not permitted",
    "no-derivatives": "adapted versions (fine-tuned, quantized or pruned variants) may not be shared",
    "use-restrictions": "the license forbids listed uses (its use-restriction attachment or acceptable use "
    "policy); every use must comply",
    "pass-terms": "anyone you give the model or a derivative to must get the same use restrictions",
    "mau-limit": "a product with more than 700 million monthly active users needs a separate license "
    "from Meta",
    "mau-limit-qwen": "a product with more than 100 million monthly active users needs a license from "
    "Alibaba Cloud",
    "naming": "name the model and products built with it as the license requires (e.g. 'Built with Llama'; "
    "derived model names start with the base model's name)",
    "no-llm-improvement": "the model and its outputs may not be used to improve other large language models",
    "eu-multimodal": "the multimodal models' rights are not granted to individuals or companies based in "
    "the EU",
    "remote-restriction": "the licensor may restrict use it believes violates its terms",
    "check": "kiln does not know this license: read it before using the model commercially",
}

# Conditions that leave commercial use plainly allowed; any other makes the verdict "conditional".
_NOTICE_ONLY = frozenset({"notice", "state-changes", "lineage"})

_PERMISSIVE_NOTICE = ("notice",)
_LLAMA3X = ("mau-limit", "use-restrictions", "naming", "notice")
_RAIL = ("use-restrictions", "pass-terms", "notice")

# lower-case Hugging Face license id -> the conditions it imposes (an empty tuple: none at all)
_TABLE: dict[str, tuple[str, ...]] = {
    "apache-2.0": ("notice", "state-changes"),
    "mit": _PERMISSIVE_NOTICE,
    "isc": _PERMISSIVE_NOTICE,
    "zlib": _PERMISSIVE_NOTICE,
    "bsl-1.0": _PERMISSIVE_NOTICE,
    "postgresql": _PERMISSIVE_NOTICE,
    "ncsa": _PERMISSIVE_NOTICE,
    "upl-1.0": _PERMISSIVE_NOTICE,
    "ms-pl": _PERMISSIVE_NOTICE,
    "afl-3.0": _PERMISSIVE_NOTICE,
    "ecl-2.0": ("notice", "state-changes"),
    "artistic-2.0": _PERMISSIVE_NOTICE,
    "ofl-1.1": _PERMISSIVE_NOTICE,
    "apple-ascl": _PERMISSIVE_NOTICE,
    "cdla-permissive-1.0": _PERMISSIVE_NOTICE,
    "cdla-permissive-2.0": _PERMISSIVE_NOTICE,
    "cc0-1.0": (),
    "unlicense": (),
    "wtfpl": (),
    "pddl": (),
    "odc-by": ("attribution",),
    "odbl": ("attribution", "share-alike"),
    "cdla-sharing-1.0": ("share-alike",),
    "mpl-2.0": ("notice", "weak-copyleft"),
    "osl-3.0": ("notice", "source-disclosure", "share-alike", "network-use"),
    "openrail": _RAIL,
    "openrail++": _RAIL,
    "creativeml-openrail-m": _RAIL,
    "bigscience-openrail-m": _RAIL,
    "bigscience-bloom-rail-1.0": _RAIL,
    "bigcode-openrail-m": _RAIL,
    "llama2": ("mau-limit", "use-restrictions", "no-llm-improvement", "notice"),
    "llama3": (*_LLAMA3X, "no-llm-improvement"),
    "llama3.1": _LLAMA3X,
    "llama3.2": (*_LLAMA3X, "eu-multimodal"),
    "llama3.3": _LLAMA3X,
    "llama4": (*_LLAMA3X, "eu-multimodal"),
    "gemma": ("use-restrictions", "pass-terms", "notice", "remote-restriction"),
    "tongyi-qianwen": ("mau-limit-qwen", "naming", "notice"),
    "qwen": ("mau-limit-qwen", "naming", "notice"),
    "qwen-research": ("non-commercial", "notice"),
    "tongyi-qianwen-research": ("non-commercial", "notice"),
    "deepseek": _RAIL,
    "deepseek-license": _RAIL,
    "nvidia-open-model-license": ("attribution", "notice"),
    "deepfloyd-if-license": ("non-commercial", "use-restrictions", "notice"),
    "apple-amlr": ("non-commercial", "notice"),
}
_PREFIX_TABLE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bsd", _PERMISSIVE_NOTICE),
    ("agpl", ("notice", "source-disclosure", "share-alike", "network-use")),
    ("lgpl", ("notice", "weak-copyleft")),
    ("gpl", ("notice", "source-disclosure", "share-alike")),
    ("gfdl", ("attribution", "share-alike")),
    ("epl", ("notice", "weak-copyleft")),
    ("eupl", ("notice", "source-disclosure", "share-alike")),
)
_ALIASES = {
    "apache 2.0": "apache-2.0",
    "apache2": "apache-2.0",
    "apache-2": "apache-2.0",
    "apache license 2.0": "apache-2.0",
    "llama-2": "llama2",
    "llama-3": "llama3",
    "llama-3.1": "llama3.1",
    "llama-3.2": "llama3.2",
    "llama-3.3": "llama3.3",
    "llama-4": "llama4",
}

# LICENSE-file texts, told by their first lines
_LICENSE_TEXTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"LLAMA 2 COMMUNITY LICENSE", re.I), "llama2"),
    (re.compile(r"LLAMA 3\.1 COMMUNITY LICENSE", re.I), "llama3.1"),
    (re.compile(r"LLAMA 3\.2 COMMUNITY LICENSE", re.I), "llama3.2"),
    (re.compile(r"LLAMA 3\.3 COMMUNITY LICENSE", re.I), "llama3.3"),
    (re.compile(r"LLAMA 4 COMMUNITY LICENSE", re.I), "llama4"),
    (re.compile(r"META LLAMA 3 COMMUNITY LICENSE", re.I), "llama3"),
    (re.compile(r"Gemma Terms of Use", re.I), "gemma"),
    (re.compile(r"Apache License\s+Version 2\.0", re.I), "apache-2.0"),
    (re.compile(r"GNU AFFERO GENERAL PUBLIC LICENSE\s+Version 3", re.I), "agpl-3.0"),
    (re.compile(r"GNU LESSER GENERAL PUBLIC LICENSE\s+Version 3", re.I), "lgpl-3.0"),
    (re.compile(r"GNU GENERAL PUBLIC LICENSE\s+Version 3", re.I), "gpl-3.0"),
    (re.compile(r"GNU GENERAL PUBLIC LICENSE\s+Version 2", re.I), "gpl-2.0"),
    (re.compile(r"Attribution-NonCommercial-ShareAlike 4\.0", re.I), "cc-by-nc-sa-4.0"),
    (re.compile(r"Attribution-NonCommercial-NoDerivatives 4\.0", re.I), "cc-by-nc-nd-4.0"),
    (re.compile(r"Attribution-NonCommercial 4\.0", re.I), "cc-by-nc-4.0"),
    (re.compile(r"Attribution-ShareAlike 4\.0", re.I), "cc-by-sa-4.0"),
    (re.compile(r"Attribution-NoDerivatives 4\.0", re.I), "cc-by-nd-4.0"),
    (re.compile(r"Attribution 4\.0 International", re.I), "cc-by-4.0"),
    (re.compile(r"CreativeML Open RAIL-M", re.I), "creativeml-openrail-m"),
    (re.compile(r"BigScience (?:Open )?RAIL", re.I), "bigscience-openrail-m"),
    (re.compile(r"Permission is hereby granted, free of charge", re.I), "mit"),
    (re.compile(r"Redistribution and use in source and binary forms", re.I), "bsd-3-clause"),
    (
        re.compile(r"This is free and unencumbered software released into the public domain", re.I),
        "unlicense",
    ),
)
_LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "license.txt", "COPYING")
_MAX_LICENSE_BYTES = 1 << 20

# base_model ids whose license a derivative keeps, whatever its own card says
_LINEAGE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"llama-2", re.I), "llama2"),
    (re.compile(r"llama-3\.1", re.I), "llama3.1"),
    (re.compile(r"llama-3\.2", re.I), "llama3.2"),
    (re.compile(r"llama-3\.3", re.I), "llama3.3"),
    (re.compile(r"llama-4", re.I), "llama4"),
    (re.compile(r"(?:meta-)?llama-3(?![.\d])", re.I), "llama3"),
    (re.compile(r"^google/(?:code|recurrent|pali|shield|data|med)?gemma", re.I), "gemma"),
)

_RANK: dict[Verdict, int] = {"allowed": 0, "conditional": 1, "unknown": 2, "not-allowed": 3}


class LicenseVerdict(BaseModel):
    """May the model be used commercially, on which conditions, and where kiln read that.

    ``license``     the license id as declared ("apache-2.0", "llama3.1", "mit, cc-by-nc-4.0", "unknown")
    ``verdict``     allowed / conditional / not-allowed / unknown
    ``conditions``  "key: what it asks", one per condition (keys in ``CONDITIONS``)
    ``source``      where the license was read ("README.md: license", "LICENSE", "config.json", ...)
    ``base_models`` the card's ``base_model`` lineage
    ``link``        the card's ``license_link``, when it gives one
    """

    model_config = ConfigDict(frozen=True)

    license: str
    verdict: Verdict
    conditions: list[str] = Field(default_factory=list)
    source: str = "none"
    base_models: list[str] = Field(default_factory=list)
    link: str | None = None

    @property
    def condition_keys(self) -> list[str]:
        return [c.split(":", 1)[0] for c in self.conditions]

    @property
    def clearly_allowed(self) -> bool:
        return self.verdict == "allowed"


def _norm(lic: str) -> str:
    key = lic.strip().lower()
    return _ALIASES.get(key, key)


def _conditions_of(lic: str) -> tuple[str, ...] | None:
    """The condition keys of one license id; None when kiln does not know it."""
    key = _norm(lic)
    if key in _TABLE:
        return _TABLE[key]
    m = re.fullmatch(r"cc-by(-nc)?(-sa|-nd)?-\d\.\d", key)
    if m:
        keys = ["attribution"]
        if m.group(1):
            keys.insert(0, "non-commercial")
        if m.group(2) == "-sa":
            keys.append("share-alike")
        elif m.group(2) == "-nd":
            keys.append("no-derivatives")
        return tuple(keys)
    for prefix, keys_ in _PREFIX_TABLE:
        if key.startswith(prefix):
            return keys_
    return None


def _verdict_of(keys: list[str]) -> Verdict:
    if "non-commercial" in keys:
        return "not-allowed"
    if "check" in keys:
        return "unknown"
    return "allowed" if set(keys) <= _NOTICE_ONLY else "conditional"


def _describe(keys: list[str]) -> list[str]:
    return [f"{k}: {CONDITIONS[k]}" for k in dict.fromkeys(keys)]


def verdict_for_license(
    license_id: str | None, *, source: str = "none", link: str | None = None
) -> LicenseVerdict:
    """The verdict for a declared license id (or several: "a, b", "a AND b", "a OR b")."""
    if not license_id or _norm(license_id) in ("unknown", "other", "none", "noassertion"):
        hint = f" ({link})" if link else ""
        return LicenseVerdict(
            license=license_id or "unknown",
            verdict="unknown",
            conditions=[
                f"check: no license kiln can read is declared{hint}; find and read it before using "
                "the model commercially"
            ],
            source=source,
            link=link,
        )
    alternatives = re.split(r"\s+or\s+", license_id.strip(), flags=re.I)
    options: list[list[str]] = []
    for alt in alternatives:
        keys: list[str] = []
        for part in re.split(r"\s*,\s*|\s+and\s+", alt, flags=re.I):
            if not part:
                continue
            known = _conditions_of(part)
            keys.extend(known if known is not None else ("check",))
        options.append(keys)
    keys = min(options, key=lambda k: (_RANK[_verdict_of(k)], len(k)))
    conditions = _describe(keys)
    if "check" in keys and link:
        conditions = [c if not c.startswith("check:") else f"{c} ({link})" for c in conditions]
    return LicenseVerdict(
        license=license_id, verdict=_verdict_of(keys), conditions=conditions, source=source, link=link
    )


def _card_fields(text: str) -> dict[str, object]:
    """license, license_name, license_link and base_model from a card's front matter ({} without one)."""
    block = _front_matter(text)
    if block is None:
        return {}
    try:
        import yaml

        data = yaml.safe_load(block)
        if isinstance(data, dict):
            return {k: data.get(k) for k in ("license", "license_name", "license_link", "base_model")}
    except Exception:  # no PyYAML, or YAML the card's author got wrong: fall back to line matches
        pass
    out: dict[str, object] = {}
    for key in ("license", "license_name", "license_link", "base_model"):
        m = re.search(rf"^{key}:[ \t]*[\"']?([^\s\"'#]+)", block, flags=re.MULTILINE)
        if m:
            out[key] = m.group(1)
    return out


def license_from_text(text: str) -> str | None:
    """The license id a LICENSE file's text is, from its wording; None when kiln does not recognise it."""
    head = text[:20_000]
    for pattern, lic in _LICENSE_TEXTS:
        if pattern.search(head):
            return lic
    return None


def _license_file(folder: Path) -> tuple[str, str] | None:
    for name in _LICENSE_FILES:
        p = folder / name
        if p.is_file() and p.stat().st_size <= _MAX_LICENSE_BYTES:
            lic = license_from_text(p.read_text(encoding="utf-8", errors="replace"))
            if lic:
                return lic, name
    return None


def _base_models(value: object) -> list[str]:
    if isinstance(value, str) and value.strip():
        return [value.strip()]
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return []


def _with_lineage(v: LicenseVerdict, bases: list[str]) -> LicenseVerdict:
    if not bases:
        return v
    keys = list(v.condition_keys)
    conditions = list(v.conditions)
    verdicts = [v.verdict]
    for base in bases:
        inherited = next((lic for pattern, lic in _LINEAGE if pattern.search(base)), None)
        if inherited is None:
            conditions.append(
                f"lineage: derived from {base}; its license applies too, check it if it differs from this one"
            )
            continue
        base_v = verdict_for_license(inherited)
        new = [k for k in base_v.condition_keys if k not in keys]
        keys.extend(new)
        conditions.append(f"lineage: derived from {base}, which is under {inherited}; its terms apply too")
        conditions.extend(_describe(new))
        verdicts.append(base_v.verdict)
    verdict = max(verdicts, key=lambda x: _RANK[x])
    return v.model_copy(update={"verdict": verdict, "conditions": conditions, "base_models": bases})


def _verdict_from_card(fields: dict[str, object], card_name: str) -> LicenseVerdict | None:
    lic = _as_license(fields.get("license"))
    name = _as_license(fields.get("license_name"))
    link = _as_license(fields.get("license_link"))
    if lic is not None and lic.lower() == "other" and name:
        return verdict_for_license(name, source=f"{card_name}: license_name", link=link)
    if lic is not None:
        return verdict_for_license(lic, source=f"{card_name}: license", link=link)
    return None


def license_verdict(model: Path | str) -> LicenseVerdict:
    """The commercial-use verdict for a model folder (a Path, or a str naming a folder) or a card's text.

    A folder is read in this order: the card's ``license`` (``license_name`` when it is "other"), a LICENSE
    file, ``config.json``'s ``license``. The card's ``base_model`` lineage is added in every case.
    """
    folder: Path | None = None
    if isinstance(model, Path):
        folder = model
    elif "\n" not in model and len(model) < 4096 and Path(model).is_dir():
        folder = Path(model)
    if folder is None:
        card_fields = _card_fields(str(model))
        text_v = _verdict_from_card(card_fields, "model card") or verdict_for_license(
            None, source="model card"
        )
        return _with_lineage(text_v, _base_models(card_fields.get("base_model")))

    fields: dict[str, object] = {}
    card = folder / "README.md"
    if card.is_file() and card.stat().st_size <= _MAX_CARD_BYTES:
        fields = _card_fields(card.read_text(encoding="utf-8", errors="replace"))
    from_card = _verdict_from_card(fields, "README.md")
    v = from_card
    if v is None or v.verdict == "unknown":
        found = _license_file(folder)
        if found is not None:
            v = verdict_for_license(found[0], source=found[1], link=from_card.link if from_card else None)
    if v is None:
        config_lic = _config_license(folder)
        v = verdict_for_license(config_lic, source="config.json" if config_lic else "none")
    return _with_lineage(v, _base_models(fields.get("base_model")))


def _config_license(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return _as_license(data.get("license")) if isinstance(data, dict) else None


def license_warning(v: LicenseVerdict) -> str | None:
    """One line to print when commercial use is not clearly allowed; None when it is."""
    if v.verdict == "allowed":
        return None
    what = {
        "conditional": "allows commercial use only on conditions",
        "not-allowed": "does not allow commercial use",
        "unknown": "could not be classified: commercial use is not known to be allowed",
    }[v.verdict]
    keys = ", ".join(k for k in dict.fromkeys(v.condition_keys) if k != "lineage")
    return f"license {v.license} ({v.source}) {what}" + (f": {keys}" if keys else "")
