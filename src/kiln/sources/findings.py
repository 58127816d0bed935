"""Safety findings: what the scanners report, and how a user overrides one by naming it.

A :class:`SafetyFinding` says which file (``path``), where inside it (``location``: a zip member, a nested
pickle, a byte offset), how bad it is (``severity``), what kind of problem it is (``kind``) and, in
``detail``, what was seen. Its ``id`` is stable across runs and machines (it holds no byte offsets or
absolute paths), so a user who has checked a finding by hand can name it in an override
(``kiln build --allow-unsafe ID``). ``message`` is the one line kiln prints.

Kinds (and the ``id`` each gets)::

    pickle-import        an import off the allowlist         pickle-import:<module.name>
    pickle-unresolved    a STACK_GLOBAL kiln cannot resolve  pickle-unresolved:<path>
    pickle-extension     an EXT1/EXT2/EXT4 copyreg import    pickle-extension:<path>
    pickle-malformed     a pickle that does not parse        pickle-malformed:<path>
    unreadable           a file or member kiln cannot read   unreadable:<path>
    too-large            a pickle too large to check         too-large:<path>
    archive-unscanned    an archive kiln cannot look inside  archive-unscanned:<path>
    safetensors-header   a header past the sanity limits     safetensors-header:<path>
    onnx-external-data   external data outside the folder    onnx-external-data:<location>
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict

Severity = Literal["critical", "high", "medium", "low"]
SEVERITY_ORDER: tuple[Severity, ...] = ("critical", "high", "medium", "low")


class SafetyFinding(BaseModel):
    """One reason a file is not known to be safe to load."""

    model_config = ConfigDict(frozen=True)

    path: str
    location: str
    severity: Severity
    kind: str
    detail: str
    id: str
    message: str

    def __str__(self) -> str:
        return self.message


def make_finding(
    *,
    path: str,
    where: str,
    location: str,
    severity: Severity,
    kind: str,
    detail: str,
    subject: str | None = None,
) -> SafetyFinding:
    """A finding whose message is ``"{where}: {detail}"`` and whose id is ``"{kind}:{subject or path}"``."""
    return SafetyFinding(
        path=path,
        location=location,
        severity=severity,
        kind=kind,
        detail=detail,
        id=f"{kind}:{subject if subject is not None else path}",
        message=f"{where}: {detail}",
    )


def not_allowed(findings: Iterable[SafetyFinding], allow: Collection[str] = ()) -> list[SafetyFinding]:
    """The findings whose id the user did not name in ``allow`` (ids compare exactly)."""
    allowed = {a.strip() for a in allow}
    return [f for f in findings if f.id not in allowed]


def refusal_message(subject: object, findings: list[SafetyFinding], *, limit: int = 8) -> str:
    """Why ``subject`` is not loaded, each finding with its id, and how to override after checking."""
    shown = [f"[{f.severity}] {f.message} (id {f.id})" for f in findings[:limit]]
    if len(findings) > limit:
        shown.append(f"... and {len(findings) - limit} more")
    ids = " ".join(f"--allow-unsafe {i}" for i in dict.fromkeys(f.id for f in findings))
    return (
        f"{subject} is not safe to load:\n  "
        + "\n  ".join(shown)
        + "\nLoading it could run code on this machine or read files outside the model folder. Use a "
        "safetensors or ONNX copy of the model, or one from a source you trust; if you have checked these "
        f"findings yourself and accept them, name each one: {ids}"
    )
