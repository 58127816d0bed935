"""Child process of :meth:`kiln.tasks.image_classify.ImageClassifyTask.peak_rss_mb`: load one image model
(``reference``: the EfficientNet-Lite0 ``.pth`` or a reference ``.onnx``; ``onnx``: a variant), run one
batch of 8 random images, print ``{"peak_rss_mb": ...}``.

    python -m kiln.tasks.image_memory_probe reference|onnx PATH THREADS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from kiln.bench.memory_probe import peak_rss_mb_self

BATCH = 8


def main(argv: list[str] | None = None) -> int:
    kind, path_s, threads_s = (argv if argv is not None else sys.argv[1:])[:3]
    path, threads = Path(path_s), int(threads_s)
    if kind == "reference" and path.suffix != ".onnx":
        import torch

        from kiln.tasks.image_classify_torch import load_efficientnet_lite0

        if threads > 0:
            torch.set_num_threads(threads)
        model = load_efficientnet_lite0(path)
        with torch.inference_mode():
            model(torch.rand(BATCH, 3, 224, 224) * 2 - 1)
    else:
        from kiln.runtime.onnx_backend import OnnxBackend

        backend = OnnxBackend(path, threads)
        inp = backend.session.get_inputs()[0]
        side = [d if isinstance(d, int) else 224 for d in inp.shape[2:]]
        x = np.random.default_rng(0).uniform(-1, 1, size=(BATCH, 3, *side)).astype(np.float32)
        backend.run({inp.name: x})
    print(json.dumps({"peak_rss_mb": peak_rss_mb_self()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
