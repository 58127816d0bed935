"""Find a model's weight files and count its parameters from headers, loading no tensors where it can.

    safetensors   JSON headers (sharded via ``model.safetensors.index.json``)
    onnx          initializer dims, read from the protobuf wire format
    gguf          tensor infos of the GGUF header
    pytorch-zip / pickle
                  scanned first; counted with ``torch.load(weights_only=True)`` only when the scan is clean
                  and torch is installed, else the count is unknown

Known buffers that checkpoints store beside the weights (``position_ids``, ``token_type_ids``,
``num_batches_tracked``, rotary ``inv_freq``, batch-norm running statistics) are not parameters and are left
out of the count; so are int64 ONNX initializers (shapes and indices, not weights).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kiln.analyze.hf_config import read_json
from kiln.errors import UnsupportedFormatError
from kiln.sources.filetype import PICKLE_FORMATS, WEIGHT_FORMATS, detect_format
from kiln.sources.findings import SafetyFinding
from kiln.sources.gguf import GGUFHeader, read_gguf_header
from kiln.sources.onnx_proto import OnnxModelInfo, read_onnx_info
from kiln.sources.pickle_scan import scan_pickle_findings
from kiln.sources.safetensors_header import DTYPE_NAME, read_safetensors_header
from kiln.sources.scan import check_onnx_external_data as _check_external

_INT_BUFFERS = frozenset({"position_ids", "token_type_ids", "num_batches_tracked"})
_FLOAT_BUFFERS = frozenset({"inv_freq", "masked_bias", "running_mean", "running_var"})
# preferred weight formats, best first; pickle-based ones last-but-safe (they need a scan)
_PREFERENCE = ("safetensors", "pytorch", "onnx", "gguf")
_INDEX = {"safetensors": "model.safetensors.index.json", "pytorch": "pytorch_model.bin.index.json"}
_SINGLE = {"safetensors": "model.safetensors", "pytorch": "pytorch_model.bin", "onnx": "model.onnx"}


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (posix), or its name when it is elsewhere."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def is_buffer(name: str, dtype: str) -> bool:
    """True for tensors checkpoints store that are not trained parameters."""
    last = name.rsplit(".", 1)[-1]
    if last in _INT_BUFFERS:
        return dtype.startswith(("int", "uint"))
    return last in _FLOAT_BUFFERS


@dataclass
class Weights:
    """The weight files of a model and what their headers say."""

    format: str  # a WEIGHT_FORMATS value
    files: list[Path]
    root: Path  # folder the files (and ONNX external data) must stay inside
    parameters: int | None = None
    stored_dtypes: dict[str, int] = field(default_factory=dict)
    file_bytes: int = 0
    safety: list[SafetyFinding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gguf: GGUFHeader | None = None
    onnx: OnnxModelInfo | None = None

    @property
    def dtype(self) -> str | None:
        if not self.stored_dtypes:
            return None
        return max(self.stored_dtypes.items(), key=lambda kv: kv[1])[0]


def _group(fmt: str) -> str:
    return "pytorch" if fmt in PICKLE_FORMATS else fmt


def _top_files(folder: Path) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if not p.name.startswith(".") and p.is_file() and p.stat().st_size > 0]


def _classify(folder: Path, notes: list[str]) -> tuple[dict[str, list[tuple[Path, str]]], list[Exception]]:
    groups: dict[str, list[tuple[Path, str]]] = {}
    broken: list[Exception] = []
    for p in _top_files(folder):
        try:
            fmt = detect_format(p)
        except UnsupportedFormatError as exc:
            broken.append(exc)
            notes.append(str(exc))
            continue
        if fmt in WEIGHT_FORMATS:
            groups.setdefault(_group(fmt), []).append((p, fmt))
    return groups, broken


def _shards(folder: Path, index_name: str, notes: list[str]) -> list[Path] | None:
    index = read_json(folder / index_name, notes)
    if index is None:
        return None
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        notes.append(f"{index_name} has no weight_map; shards found by content instead")
        return None
    return [folder / str(name) for name in sorted({str(v) for v in weight_map.values()})]


def _pick(
    folder: Path, group: str, found: list[tuple[Path, str]], notes: list[str]
) -> tuple[list[Path], str]:
    by_name = {p.name: (p, fmt) for p, fmt in found}
    fmt_of = {p: fmt for p, fmt in found}
    if group in _INDEX:
        shards = _shards(folder, _INDEX[group], notes)
        if shards is not None:
            fmt = next((fmt_of[s] for s in shards if s in fmt_of), found[0][1])
            return shards, fmt
    single = _SINGLE.get(group)
    if single and single in by_name:
        p, fmt = by_name[single]
        return [p], fmt
    if group in ("safetensors", "pytorch"):
        return [p for p, _ in found], found[0][1]
    if len(found) > 1:
        others = ", ".join(p.name for p, _ in found[1:])
        notes.append(
            f"{folder.name}/ holds {len(found)} {group} files; inspected {found[0][0].name} (pass a file "
            f"path to inspect another: {others})"
        )
    return [found[0][0]], found[0][1]


def find_weights(folder: Path, notes: list[str]) -> Weights:
    """A folder's weight files: the best format at its top level, else in its first subfolder with any."""
    folder = Path(folder)
    groups, broken = _classify(folder, notes)
    if not groups:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            sub_groups, sub_broken = _classify(sub, notes)
            broken.extend(sub_broken)
            if sub_groups:
                groups, folder_with = sub_groups, sub
                break
        else:
            if broken:
                raise broken[0]
            raise UnsupportedFormatError(
                f"no model weights found in {folder}: kiln reads safetensors, PyTorch (.bin/.pt), ONNX and "
                "GGUF files; pass the folder that holds them, or a weight file"
            )
    else:
        folder_with = folder
    group = next(g for g in _PREFERENCE if g in groups)
    files, fmt = _pick(folder_with, group, groups[group], notes)
    return Weights(format=fmt, files=files, root=folder)


def weights_of_file(path: Path, fmt: str) -> Weights:
    return Weights(format=fmt, files=[path], root=path.parent)


def _count_safetensors(w: Weights) -> None:
    dtypes: Counter[str] = Counter()
    for f in w.files:
        header = read_safetensors_header(f)
        for t in header.tensors.values():
            dtype = DTYPE_NAME.get(t.dtype, t.dtype.lower())
            if not is_buffer(t.name, dtype):
                dtypes[dtype] += t.numel
    w.stored_dtypes = dict(dtypes)
    w.parameters = sum(dtypes.values())


def check_onnx_external_data(
    onnx_path: Path, info: OnnxModelInfo, root: Path, *, label: str | None = None
) -> tuple[list[SafetyFinding], list[Path]]:
    """Findings for external-data locations outside ``root`` (``..``, absolute, symlinks out), and the
    external files that are inside."""
    return _check_external(onnx_path, info.external_locations, root, label=label)


def _count_onnx(w: Weights) -> None:
    dtypes: Counter[str] = Counter()
    extra_files: list[Path] = []
    for f in w.files:
        info = read_onnx_info(f)
        w.onnx = w.onnx or info
        for t in info.initializers:
            if t.dtype != "int64" and not is_buffer(t.name, t.dtype):
                dtypes[t.dtype] += t.numel
        findings, external = check_onnx_external_data(f, info, w.root, label=relative_name(f, w.root))
        w.safety.extend(findings)
        for ext in external:
            if ext.is_file():
                extra_files.append(ext)
            else:
                w.notes.append(f"{f.name}: external data file {ext.name} is missing; the model will not load")
    w.stored_dtypes = dict(dtypes)
    w.parameters = sum(dtypes.values())
    w.file_bytes += sum(p.stat().st_size for p in sorted(set(extra_files)))


def _count_gguf(w: Weights) -> None:
    dtypes: Counter[str] = Counter()
    for f in w.files:
        header = read_gguf_header(f)
        w.gguf = w.gguf or header
        for t in header.tensors:
            dtypes[t.type_name] += t.numel
    w.stored_dtypes = dict(dtypes)
    w.parameters = sum(dtypes.values())


def _tensors_in(obj: object, prefix: str = "", depth: int = 0) -> list[tuple[str, object]]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if depth > 4:
        return []
    out: list[tuple[str, object]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(_tensors_in(v, f"{prefix}.{k}" if prefix else str(k), depth + 1))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.extend(_tensors_in(v, f"{prefix}.{i}" if prefix else str(i), depth + 1))
    return out


def _count_pickled(w: Weights) -> None:
    for f in w.files:
        w.safety.extend(scan_pickle_findings(f, label=relative_name(f, w.root)))
    if w.safety:
        w.notes.append("parameters not counted: the checkpoint is not safe to load (see safety)")
        return
    try:
        import torch
    except ImportError:
        w.notes.append(
            "parameters not counted: PyTorch checkpoints need torch (pip install 'modelkiln[build]')"
        )
        return
    dtypes: Counter[str] = Counter()
    for f in w.files:
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True, mmap=w.format == "pytorch-zip")
        except Exception as exc:  # weights_only refuses anything but tensors and plain containers
            w.notes.append(f"parameters not counted: torch.load(weights_only=True) refused {f.name} ({exc})")
            return
        for name, t in _tensors_in(obj):
            assert isinstance(t, torch.Tensor)
            dtype = str(t.dtype).removeprefix("torch.")
            if not is_buffer(name, dtype):
                dtypes[dtype] += math.prod(t.shape)
    w.stored_dtypes = dict(dtypes)
    w.parameters = sum(dtypes.values())


def count_parameters(w: Weights) -> Weights:
    """Fill in parameters, stored dtypes, bytes on disk and safety findings (in place; returns ``w``)."""
    missing = [f for f in w.files if not f.is_file()]
    if missing:
        names = ", ".join(f.name for f in missing)
        w.notes.append(f"weight files missing: {names}; parameters not counted")
        w.files = [f for f in w.files if f.is_file()]
        w.file_bytes = sum(f.stat().st_size for f in w.files)
        return w
    w.file_bytes = sum(f.stat().st_size for f in w.files)
    if w.format == "safetensors":
        _count_safetensors(w)
    elif w.format == "onnx":
        _count_onnx(w)
    elif w.format == "gguf":
        _count_gguf(w)
    elif w.format in PICKLE_FORMATS:
        _count_pickled(w)
    return w
