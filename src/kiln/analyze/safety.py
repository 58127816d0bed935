"""Scan every file of a model folder that could run code or read outside the folder when loaded.

Pickles and zip-format torch checkpoints (told by their first bytes) go through the pickle scanner;
ONNX models (told by their protobuf structure) have their external-data locations checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from kiln.analyze.weights import check_onnx_external_data
from kiln.errors import UnsupportedFormatError
from kiln.sources.filetype import sniff_magic
from kiln.sources.onnx_proto import looks_like_onnx, read_onnx_info
from kiln.sources.pickle_scan import ZIP_MAGIC, scan_pickle

MAX_FILES = 10_000


def _files(root: Path, notes: list[str]) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            out.append(Path(dirpath) / name)
            if len(out) >= MAX_FILES:
                notes.append(
                    f"{root} holds more than {MAX_FILES} files; only the first {MAX_FILES} were scanned"
                )
                return out
    return out


def scan_folder(root: Path, notes: list[str]) -> list[str]:
    """Safety findings for every file under ``root`` (names relative to ``root``)."""
    findings: list[str] = []
    for path in _files(root, notes):
        rel = path.relative_to(root).as_posix()
        try:
            if not path.is_file() or path.stat().st_size == 0:
                continue
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as exc:
            notes.append(f"{rel}: cannot be read ({exc.strerror}); not scanned")
            continue
        if head[:4] == ZIP_MAGIC or sniff_magic(head) == "pickle":
            findings.extend(scan_pickle(path, label=rel))
        elif head[:1] == b"\x08":
            try:
                if not looks_like_onnx(path):
                    continue
                more, _ = check_onnx_external_data(path, read_onnx_info(path), root, label=rel)
            except UnsupportedFormatError as exc:
                notes.append(str(exc))
                continue
            findings.extend(more)
    return findings
