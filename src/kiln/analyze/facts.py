"""ModelFacts: what inspect finds about a model. Numbers are read from the files or marked as estimates."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from kiln.analyze.license import LicenseClass, LicenseVerdict
from kiln.sources.findings import SafetyFinding, not_allowed

__all__ = ["DTYPE_WIDTHS", "LicenseClass", "LicenseVerdict", "ModelFacts", "SafetyFinding", "weight_bytes"]

# bytes per parameter for the memory estimates in ModelFacts.bytes
DTYPE_WIDTHS: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


def weight_bytes(parameters: int) -> dict[str, int]:
    """Bytes the weights take at each width: parameters x width (int4: half a byte, rounded up)."""
    return {name: int(-(-parameters * int(width * 2) // 2)) for name, width in DTYPE_WIDTHS.items()}


class ModelFacts(BaseModel):
    """Facts about one model.

    ``format``          the source's format: "hf-folder" / "folder", or the single file's format
    ``weight_format``   format of the weight files inspected (safetensors, onnx, gguf, pytorch-zip, pickle)
    ``parameters``      elements of the stored weights, less known buffers (position_ids...); None: unknown
    ``bytes``           weight memory at fp32/fp16/bf16/int8/int4: parameters x width, an estimate
    ``file_bytes``      bytes on disk of the weight files (and ONNX external data)
    ``dtype``           the stored dtype holding most parameters; ``stored_dtypes`` has the full split
    ``license_class``   permissive / copyleft / non-commercial / restricted (use restrictions) / unknown
    ``license_verdict`` may it be used commercially (allowed / conditional / not-allowed / unknown), on which
                        conditions, and where the license was read
    ``safety``          findings, one line each: imports a pickle would run, ONNX external data outside the
                        folder... Empty means nothing unsafe was found.
    ``safety_findings`` the same findings as SafetyFinding (path, location, severity, kind, detail, id):
                        ``unsafe(allow)`` is what is left once the user names checked ids
    ``notes``           caveats about the other facts (what could not be read, and why)
    """

    model_config = ConfigDict(protected_namespaces=(), frozen=True)

    path: Path
    format: str
    weight_format: str | None = None
    architecture: str | None = None
    model_type: str | None = None
    parameters: int | None = None
    bytes: dict[str, int] = Field(default_factory=dict)
    file_bytes: int = 0
    dtype: str | None = None
    stored_dtypes: dict[str, int] = Field(default_factory=dict)
    max_sequence_length: int | None = None
    license: str = "unknown"
    license_class: LicenseClass = "unknown"
    tokenizer: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    vocab_size: int | None = None
    weight_files: list[str] = Field(default_factory=list)
    license_verdict: LicenseVerdict | None = None
    safety: list[str] = Field(default_factory=list)
    safety_findings: list[SafetyFinding] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    source_kind: str | None = None
    spec: str | None = None
    revision: str | None = None
    model_id: str | None = None

    @property
    def safe(self) -> bool:
        """True when the scan found nothing that would run code or escape the model folder."""
        return not self.safety

    def unsafe(self, allow: Collection[str] = ()) -> list[SafetyFinding]:
        """The findings the user has not overridden by naming their id in ``allow``."""
        return not_allowed(self.safety_findings, allow)
