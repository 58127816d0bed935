"""Peak resident memory of a variant, measured in a fresh Python process.

Measuring inside the build process would count everything the build already holds (torch, the reference
model, calibration data). A child process (:mod:`kiln.bench.memory_probe`) loads only the variant, runs one
batch of synthetic ids and reports its own peak RSS, which is what a serving process of that variant needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import kiln
from kiln.errors import BuildError

ProbeKind = Literal["onnx", "torch-embed"]
_STDERR_TAIL_CHARS = 2000


def _tail(text: str, limit: int = _STDERR_TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def _child_env() -> dict[str, str]:
    """The parent's environment, with kiln's source root first on PYTHONPATH (works uninstalled too)."""
    env = dict(os.environ)
    src_root = str(Path(kiln.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH", "")) if p)
    return env


def peak_rss_mb(
    kind: ProbeKind,
    path: str,
    tokenizer_path: str | None,
    batch_size: int = 32,
    seq_len: int = 128,
    threads: int = 0,
    timeout_s: float = 600.0,
) -> float:
    """Peak RSS in MiB of a fresh process that loads the variant at ``path`` and runs one batch.

    ``kind`` is ``"onnx"`` (an ``.onnx`` file run with ONNX Runtime) or ``"torch-embed"`` (a Hugging Face
    model folder loaded with ``AutoModel``). The tokenizer, when given, is loaded too, as a server would.
    Raises :class:`BuildError` when the variant cannot be loaded or run, or the probe runs past ``timeout_s``.
    """
    if kind not in ("onnx", "torch-embed"):
        raise BuildError(f"unknown memory probe kind {kind!r}; use 'onnx' or 'torch-embed'")
    if batch_size < 1 or seq_len < 1:
        raise BuildError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    if not Path(path).exists():
        raise BuildError(f"cannot measure memory of {path}: it does not exist")
    cmd = [
        sys.executable,
        "-m",
        "kiln.bench.memory_probe",
        "--kind",
        kind,
        "--path",
        str(path),
        "--batch-size",
        str(batch_size),
        "--seq-len",
        str(seq_len),
        "--threads",
        str(threads),
    ]
    if tokenizer_path:
        cmd += ["--tokenizer-path", str(tokenizer_path)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=_child_env(), check=False
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise BuildError(
            f"memory probe of {path} ran past {timeout_s:.0f} s and was stopped; "
            f"try a smaller batch or seq_len. stderr tail:\n{_tail(stderr)}"
        ) from exc
    if proc.returncode != 0:
        raise BuildError(
            f"memory probe of {path} ({kind}, batch {batch_size} x {seq_len}) failed with exit status "
            f"{proc.returncode}. stderr tail:\n{_tail(proc.stderr)}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        value = float(json.loads(lines[-1])["peak_rss_mb"])
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise BuildError(
            f"memory probe of {path} printed no result. stdout tail:\n{_tail(proc.stdout)}\n"
            f"stderr tail:\n{_tail(proc.stderr)}"
        ) from exc
    return value
