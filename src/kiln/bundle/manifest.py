"""``kiln.json``: everything needed to trust, reproduce and serve a bundle."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from kiln.bench.scores import VariantRecord
from kiln.runtime.onnx_backend import SessionSettings

MANIFEST_NAME = "kiln.json"
SCHEMA_VERSION = 1


class SourceRecord(BaseModel):
    kind: Literal["local", "hub", "package"]
    spec: str = Field(description="what the user passed (path, hub id) or the package name")
    path: str = Field(description="the folder the weights were read from")
    revision: str | None = Field(default=None, description="hub commit or package version")


class EvalRecord(BaseModel):
    dataset: str
    seed: int
    n_train: int
    n_test: int
    notes: str = ""


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kiln_version: str
    created_at: str
    model_name: str = Field(description="the name the server publishes the model under")
    task: str
    task_config: dict[str, Any]
    license: str
    license_verdict: dict[str, Any] | None = Field(
        default=None, description="commercial-use verdict and its conditions (kiln.analyze.license)"
    )
    allowed_findings: list[str] = Field(
        default_factory=list, description="safety findings the user overrode with --allow-unsafe"
    )
    source: SourceRecord
    machine: dict[str, Any] = Field(default_factory=dict)
    evaluation: EvalRecord | None = None
    budget: dict[str, Any] = Field(default_factory=dict)
    variants: list[VariantRecord]
    search_trace: list[dict[str, Any]] = Field(
        default_factory=list,
        description="the build's search: per candidate its recipe, last stage reached, outcome, reason and "
        "seconds",
    )
    chosen: str
    chosen_reason: str
    artifact: str = Field(description="the chosen model file, relative to the bundle")
    runtime: SessionSettings = Field(
        default_factory=SessionSettings,
        description="ONNX Runtime settings every variant was measured with; servers load the artifact so",
    )
    tokenizer: str = "tokenizer.json"
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256 of every file")

    def chosen_variant(self) -> VariantRecord:
        for v in self.variants:
            if v.name == self.chosen:
                return v
        raise KeyError(self.chosen)
