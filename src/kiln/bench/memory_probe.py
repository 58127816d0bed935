"""Child process for :func:`kiln.bench.memory.peak_rss_mb`: load one variant, run one batch, report peak RSS.

    python -m kiln.bench.memory_probe --kind onnx --path model.onnx --batch-size 32 --seq-len 128

Prints one JSON line on stdout, ``{"peak_rss_mb": ..., ...}``; on failure prints the error on stderr and
exits with status 1. It runs in a fresh interpreter so the number covers only what this variant needs
(interpreter, runtime libraries, weights, one batch of activations), not what the parent had loaded.
Only the runtime the kind needs is imported: an ONNX probe never imports torch.
"""

from __future__ import annotations

import argparse
import inspect
import json
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("onnx", "torch-embed")


def synthetic_batch(batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Ids in ``[1000, 2000)`` (ordinary word pieces), full attention mask, zero token types."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, seq_len)
    return {
        "input_ids": rng.integers(1000, 2000, size=shape, dtype=np.int64),
        "attention_mask": np.ones(shape, dtype=np.int64),
        "token_type_ids": np.zeros(shape, dtype=np.int64),
    }


def peak_rss_mb_self() -> float:
    """Peak resident set size of this process in MiB.

    Linux: ``VmHWM`` of this process's own address space. ``ru_maxrss`` is not used there: the kernel
    carries it across fork + exec, so a child of a large parent reports the parent's peak.
    Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _load_tokenizer(path: str, seq_len: int) -> None:
    from kiln.runtime.tokenizer import TextTokenizer

    tok_path = Path(path)
    if tok_path.is_dir():
        tok_path = tok_path / "tokenizer.json"
    tokenizer = TextTokenizer(tok_path, max_length=seq_len)
    tokenizer.encode(["memory probe"])  # a serving process holds a loaded, used tokenizer too


def _run_onnx(path: str, feed: dict[str, np.ndarray], threads: int) -> None:
    from kiln.runtime.onnx_backend import OnnxBackend

    backend = OnnxBackend(Path(path), threads=threads)
    missing = [name for name in backend.input_names if name not in feed]
    if missing:
        raise ValueError(f"{path} needs inputs {missing}; the probe provides {sorted(feed)}")
    backend.run(feed)


def _run_torch_embed(path: str, feed: dict[str, np.ndarray], threads: int) -> None:
    import torch
    from transformers import AutoModel

    if threads > 0:
        torch.set_num_threads(threads)
    model: Any = AutoModel.from_pretrained(path)
    model.eval()
    accepted = set(inspect.signature(model.forward).parameters)
    inputs = {name: torch.from_numpy(arr) for name, arr in feed.items() if name in accepted}
    with torch.no_grad():
        model(**inputs)


def probe(
    kind: str, path: str, tokenizer_path: str | None, batch_size: int, seq_len: int, threads: int
) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if tokenizer_path:
        _load_tokenizer(tokenizer_path, seq_len)
    feed = synthetic_batch(batch_size, seq_len)
    if kind == "onnx":
        _run_onnx(path, feed, threads)
    else:
        _run_torch_embed(path, feed, threads)
    return {
        "peak_rss_mb": peak_rss_mb_self(),
        "kind": kind,
        "batch_size": batch_size,
        "seq_len": seq_len,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.bench.memory_probe", description=__doc__)
    parser.add_argument("--kind", required=True, choices=KINDS)
    parser.add_argument("--path", required=True)
    parser.add_argument("--tokenizer-path", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        result = probe(args.kind, args.path, args.tokenizer_path, args.batch_size, args.seq_len, args.threads)
    except Exception as exc:  # report anything to the parent, which raises a BuildError
        traceback.print_exc(file=sys.stderr)
        print(f"memory probe failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
