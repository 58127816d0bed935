"""inspect_model: facts about a model from its files: format, parameters, sizes, license, safety."""

from __future__ import annotations

from pathlib import Path

from kiln.analyze.facts import ModelFacts, weight_bytes
from kiln.analyze.hf_config import ConfigFacts, gguf_facts, read_folder_facts
from kiln.analyze.license import (
    LicenseVerdict,
    classify_license,
    license_verdict,
    read_license,
    verdict_for_license,
)
from kiln.analyze.safety import scan_folder
from kiln.analyze.weights import Weights, count_parameters, find_weights, relative_name, weights_of_file
from kiln.errors import ModelNotFoundError, UnsupportedFormatError
from kiln.sources.filetype import WEIGHT_FORMATS, detect_format
from kiln.sources.findings import SafetyFinding
from kiln.sources.source import ResolvedSource


def _facts(
    path: Path,
    fmt: str,
    weights: Weights,
    config: ConfigFacts,
    license_id: str | None,
    verdict: LicenseVerdict,
    safety: list[SafetyFinding],
    notes: list[str],
    source: ResolvedSource | None,
) -> ModelFacts:
    lic = license_id or "unknown"
    findings = list({(f.id, f.message): f for f in safety}.values())
    root = path if path.is_dir() else path.parent
    return ModelFacts(
        path=path,
        format=fmt,
        weight_format=weights.format,
        architecture=config.architecture,
        model_type=config.model_type,
        parameters=weights.parameters,
        bytes=weight_bytes(weights.parameters) if weights.parameters is not None else {},
        file_bytes=weights.file_bytes,
        dtype=weights.dtype,
        stored_dtypes=weights.stored_dtypes,
        max_sequence_length=config.max_sequence_length,
        license=lic,
        license_class=classify_license(lic),
        license_verdict=verdict,
        tokenizer=config.tokenizer,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        vocab_size=config.vocab_size,
        weight_files=[relative_name(f, root) for f in weights.files],
        safety=list(dict.fromkeys(f.message for f in findings)),
        safety_findings=findings,
        notes=list(dict.fromkeys(notes)),
        source_kind=source.kind if source else None,
        spec=source.spec if source else None,
        revision=source.revision if source else None,
        model_id=source.model_id if source else None,
    )


def _inspect_folder(path: Path, source: ResolvedSource | None) -> ModelFacts:
    notes: list[str] = []
    fmt = detect_format(path)
    weights = count_parameters(find_weights(path, notes))
    config = read_folder_facts(path, notes)
    if weights.gguf is not None:
        from_gguf = gguf_facts(weights.gguf)
        config = config.or_else(from_gguf) if fmt == "hf-folder" else from_gguf.or_else(config)
    safety = scan_folder(path, notes)
    notes.extend(weights.notes)
    license_id = read_license(path) or config.license
    verdict = license_verdict(path)
    if verdict.source == "none" and config.license:
        verdict = verdict_for_license(config.license, source="weights metadata")
    return _facts(
        path,
        "hf-folder" if fmt == "hf-folder" else "folder",
        weights,
        config,
        license_id,
        verdict,
        [*weights.safety, *safety],
        notes,
        source,
    )


def _inspect_file(path: Path, source: ResolvedSource | None) -> ModelFacts:
    notes: list[str] = []
    fmt = detect_format(path)
    if fmt not in WEIGHT_FORMATS:
        raise UnsupportedFormatError(
            f"kiln cannot tell what {path} is: it reads safetensors, PyTorch (.bin/.pt), ONNX and GGUF "
            "files, and Hugging Face model folders (with a config.json)"
        )
    weights = count_parameters(weights_of_file(path, fmt))
    config = gguf_facts(weights.gguf) if weights.gguf is not None else ConfigFacts()
    license_id = config.license
    verdict = verdict_for_license(license_id, source="weights metadata" if license_id else "none")
    folder = path.parent
    if (folder / "config.json").is_file():
        # A weight file inside a model folder: the folder's config, tokenizer and card describe it.
        config = config.or_else(read_folder_facts(folder, notes))
        license_id = license_id or read_license(folder) or config.license
        if verdict.source == "none":
            verdict = license_verdict(folder)
        notes.append(f"architecture, tokenizer and license read from the folder around the file ({folder})")
    notes.extend(weights.notes)
    return _facts(path, fmt, weights, config, license_id, verdict, weights.safety, notes, source)


def inspect_model(source: ResolvedSource | Path | str) -> ModelFacts:
    """Facts about the model at ``source`` (a resolved source, or a local file or folder)."""
    resolved = source if isinstance(source, ResolvedSource) else None
    path = resolved.path if resolved is not None else Path(str(source)).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        return _inspect_folder(path, resolved)
    return _inspect_file(path, resolved)
