"""The ``embed`` task for ``kiln build``: mean-pooled sentence embeddings, judged by a linear probe."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from kiln.bench.quality import embed_quality
from kiln.bench.scores import Quality
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.base import EvalSplit, Reference, Runner, Task
from kiln.tasks.datasets import rotten_tomatoes, stratified_split
from kiln.tasks.embed_config import TASK_NAME, EmbedConfig

PROBE_NOTES = "stratified split; logistic-regression probe fitted on each variant's own train embeddings"
EXAMPLE_TEXTS = ["kiln exports this sentence.", "and a second, longer one for shape."]


class EmbedTask(Task):
    """Quality is a logistic-regression probe on the bundled Rotten Tomatoes reviews (half fit, half held
    out); parity compares embeddings."""

    name = TASK_NAME
    quality_metric = "probe_accuracy"
    memory_probe: Literal["torch-embed"] = "torch-embed"

    @property
    def graph_output(self) -> str:
        from kiln.tasks.embed_torch import GRAPH_OUTPUT

        return GRAPH_OUTPUT

    def check_model(self, model_dir: Path) -> None:
        from kiln.tasks.embed_torch import check_embed_config

        check_embed_config(model_dir)

    def load_reference(self, model_dir: Path, tokenizer: TextTokenizer, threads: int) -> Reference:
        from kiln.tasks.embed_torch import TorchEmbedder

        return TorchEmbedder(model_dir, tokenizer, threads)

    def example_feed(self, tokenizer: TextTokenizer) -> dict[str, np.ndarray]:
        return tokenizer.encode(EXAMPLE_TEXTS)

    def wrap_onnx(self, backend: OnnxBackend, tokenizer: TextTokenizer) -> Runner:
        return OnnxEmbedder(backend, tokenizer)

    def eval_split(self, model_dir: Path, eval_samples: int | None, seed: int) -> EvalSplit:
        data = rotten_tomatoes(max_samples=eval_samples or None, seed=seed)
        train, test = stratified_split(data, test_fraction=0.5, seed=seed)
        return EvalSplit(data=data, held_out=test, calibration=train, fit=train, notes=PROBE_NOTES)

    def parity_texts(self, split: EvalSplit) -> list[str]:
        """The probe's fit half: decisions never look at the held-out split."""
        assert split.fit is not None
        return split.fit.texts

    def quality_texts(self, split: EvalSplit) -> list[str]:
        assert split.fit is not None
        return split.fit.texts + split.held_out.texts

    def quality(self, reference: np.ndarray, variant: np.ndarray, split: EvalSplit, seed: int) -> Quality:
        assert split.fit is not None
        n = len(split.fit)
        return embed_quality(
            reference[:n],
            reference[n:],
            variant[:n],
            variant[n:],
            split.fit.labels,
            split.held_out.labels,
            seed=seed,
        )

    def serving_config(self, reference: Reference, max_length: int) -> EmbedConfig:
        from kiln.tasks.embed_torch import TorchEmbedder

        assert isinstance(reference, TorchEmbedder)
        return EmbedConfig(max_length=max_length, dimension=reference.dimension)
