"""An ONNX Runtime session that runs batches of named numpy arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from kiln.errors import BundleError


def session_options(threads: int = 0) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


class OnnxBackend:
    """Loads one ``.onnx`` file on the CPU execution provider."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BundleError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, {name: feed[name] for name in self.input_names}))
