"""Calibration data for static quantization: encoded feeds the caller provides, served to ONNX Runtime.

Calibration examples must come from data kept apart from the held-out evaluation split (the caller
picks them, usually from the probe's training half); kiln never draws them itself. ONNX Runtime's
histogram calibrators (Entropy, Percentile) stack every batch of a tensor into one array, so all batches
must share one shape: :func:`uniform_feeds` pads the sequence axis to the longest batch and drops a short
last batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from kiln.errors import BuildError

Feed = dict[str, np.ndarray]


def model_input_names(path: Path) -> list[str]:
    """The graph inputs a session for ``path`` expects (initializers listed as inputs excluded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def uniform_feeds(
    feeds: Sequence[Mapping[str, np.ndarray]], pad_values: Mapping[str, float] | None = None
) -> list[Feed]:
    """The feeds with one shape per input: axis 1 padded to the longest batch (``pad_values[name]``,
    default 0: the pad id and an attention mask of 0), batches smaller than the first dropped."""
    if not feeds:
        raise BuildError("calibration needs at least one encoded batch")
    pads = dict(pad_values or {})
    first = feeds[0]
    batch = {name: arr.shape[0] if arr.ndim else 0 for name, arr in first.items()}
    kept = [f for f in feeds if all(f[n].ndim == 0 or f[n].shape[0] == batch[n] for n in first)]
    out: list[Feed] = []
    for name in first:
        shapes = {f[name].shape for f in kept}
        if len(shapes) > 1 and len({(s[:1] + s[2:]) for s in shapes}) > 1:
            raise BuildError(
                f"calibration input {name!r} varies beyond its sequence axis ({sorted(shapes)}); "
                "give batches of one size and shape"
            )
    longest = {name: max(f[name].shape[1] if f[name].ndim > 1 else 0 for f in kept) for name in first}
    for f in kept:
        fixed: Feed = {}
        for name, arr in f.items():
            if arr.ndim > 1 and arr.shape[1] < longest[name]:
                width = [(0, 0)] * arr.ndim
                width[1] = (0, longest[name] - arr.shape[1])
                arr = np.pad(arr, width, constant_values=pads.get(name, 0))
            fixed[name] = np.ascontiguousarray(arr)
        out.append(fixed)
    return out


def encode_calibration(
    encode: Callable[[Sequence[str]], Mapping[str, np.ndarray]],
    texts: Sequence[str],
    batch_size: int = 16,
    max_batches: int | None = None,
) -> list[Feed]:
    """Encode ``texts`` in full batches of ``batch_size`` (a short remainder is left out)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = len(texts) // batch_size
    if max_batches is not None:
        n = min(n, max_batches)
    if n == 0:
        raise BuildError(f"calibration needs at least {batch_size} texts, got {len(texts)}")
    return [dict(encode(texts[i * batch_size : (i + 1) * batch_size])) for i in range(n)]


class CalibrationReader(CalibrationDataReader):
    """Serves encoded feeds to ``quantize_static``; rewinds so one reader can calibrate many times.

    ``input_names`` keeps only what the graph takes (tokenizers also emit ``token_type_ids``, which some
    exports drop). With ``uniform`` (default) the feeds are made one shape (see :func:`uniform_feeds`).
    """

    def __init__(
        self,
        feeds: Sequence[Mapping[str, np.ndarray]],
        input_names: Sequence[str] | None = None,
        uniform: bool = True,
        pad_values: Mapping[str, float] | None = None,
    ) -> None:
        chosen = [{k: v for k, v in f.items() if input_names is None or k in input_names} for f in feeds]
        if input_names is not None:
            for name in input_names:
                if chosen and name not in chosen[0]:
                    raise BuildError(f"calibration feeds lack the graph input {name!r}")
        self.feeds: list[Feed] = uniform_feeds(chosen, pad_values) if uniform else [dict(f) for f in chosen]
        self._next = 0

    @classmethod
    def for_model(
        cls, path: Path, feeds: Sequence[Mapping[str, np.ndarray]], uniform: bool = True
    ) -> CalibrationReader:
        return cls(feeds, model_input_names(path), uniform=uniform)

    def __len__(self) -> int:
        return len(self.feeds)

    @property
    def samples(self) -> int:
        """Examples (rows) over all batches."""
        return sum(next(iter(f.values())).shape[0] for f in self.feeds if f)

    def get_next(self) -> Feed | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def rewind(self) -> None:
        self._next = 0
