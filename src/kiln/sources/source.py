"""The answer to "where is this model?": a resolved source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SourceKind = Literal["local", "hub", "package"]


@dataclass(frozen=True)
class ResolvedSource:
    """A model spec resolved to files on this machine.

    ``kind``      "local" (a path the user gave), "hub" (a Hugging Face cache snapshot) or "package"
                  (weights shipped inside an installed Python package)
    ``spec``      what the user asked for, as given (the package name for the default model)
    ``path``      an existing local folder or file
    ``revision``  hub: the snapshot's commit hash; package: the package version; local: None
    ``model_id``  the hub id the files correspond to, when known (None for local paths)
    """

    kind: SourceKind
    spec: str
    path: Path
    revision: str | None = None
    model_id: str | None = None

    def describe(self) -> str:
        """One line for people: what was resolved and from where."""
        rev = f"@{self.revision}" if self.revision else ""
        if self.kind == "local":
            return f"local {self.path}"
        name = self.model_id or self.spec
        return f"{self.kind} {name}{rev} ({self.path})"
