"""The task protocol: what ``kiln build`` needs to know about a task to build, measure and bundle it.

A :class:`Task` owns everything task-specific in a build; the build's stages (export, quantize, parity
gate, quality, latency, memory, bundle) are the same for every task:

* ``check_model`` refuses a model folder the task cannot use, before weights are loaded;
* ``load_reference`` loads the PyTorch fp32 reference: a :class:`Reference` whose ``module`` the exporter
  traces (called with ``input_ids, attention_mask, token_type_ids``; one output named ``graph_output``);
* ``example_feed`` is the encoded batch the exporter traces with;
* ``wrap_onnx`` turns an exported graph into a :class:`Runner` like the reference;
* ``eval_split`` draws the labelled data and splits it (:class:`EvalSplit`: calibration / ranking /
  held-out, plus the examples a metric may fit on);
* ``judge_parity`` says whether a variant's raw outputs are close enough to the reference's;
* ``quality`` turns reference and variant outputs on ``quality_texts`` into a
  :class:`kiln.bench.scores.Quality` whose ``drop`` the selection budgets;
* ``serving_config`` is the task's ``task_config`` in the manifest, which the server reads.

Build-time only: implementations may import torch (lazily where they can).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel

from kiln.bench.parity import judge_parity
from kiln.bench.scores import ParityCheck, Quality
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.datasets import LabelledTexts

Precision = Literal["exact", "lossy"]


class Runner(Protocol):
    """A loaded model (reference or variant): encoded batches or texts in, float rows out."""

    def run_encoded(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    def embed(
        self, texts: Sequence[str], batch_size: int = 32, on_batch: Callable[[int], None] | None = None
    ) -> np.ndarray: ...


class Reference(Runner, Protocol):
    """The PyTorch fp32 reference; ``module`` is what the ONNX exporter traces."""

    @property
    def module(self) -> Any: ...


@dataclass
class EvalSplit:
    """The labelled data of one build and what each part is for.

    ``held_out`` is where quality is reported (never used to choose anything else); ``ranking`` is for
    comparing candidates without touching ``held_out`` (parity agreement now, the search later);
    ``calibration`` feeds recipes that need example inputs (static quantization); ``fit`` is what a metric
    itself trains on (the embed task's linear probe), empty when the metric fits nothing.
    """

    data: LabelledTexts
    held_out: LabelledTexts
    calibration: LabelledTexts
    ranking: LabelledTexts | None = None
    fit: LabelledTexts | None = None
    notes: str = ""

    @property
    def n_train(self) -> int:
        """Examples not held out (the manifest's ``n_train``)."""
        return len(self.data) - len(self.held_out)


class Task(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def graph_output(self) -> str:
        """The exported graph's single output name."""
        ...

    @property
    def quality_metric(self) -> str:
        """The primary metric (``Quality.metric``) whose drop the selection budgets."""
        ...

    @property
    def memory_probe(self) -> Literal["torch-embed"]:
        """How :func:`kiln.bench.memory.peak_rss_mb` loads the reference."""
        ...

    def check_model(self, model_dir: Path) -> None: ...

    def load_reference(self, model_dir: Path, tokenizer: TextTokenizer, threads: int) -> Reference: ...

    def example_feed(self, tokenizer: TextTokenizer) -> dict[str, np.ndarray]: ...

    def wrap_onnx(self, backend: OnnxBackend, tokenizer: TextTokenizer) -> Runner: ...

    def eval_split(self, model_dir: Path, eval_samples: int | None, seed: int) -> EvalSplit: ...

    def parity_texts(self, split: EvalSplit) -> list[str]: ...

    def judge_parity(
        self,
        checks: Sequence[ParityCheck],
        precision: Precision,
        reference: Runner,
        variant: Runner,
        split: EvalSplit,
    ) -> str | None:
        """Exact steps must keep the raw outputs within the exact tolerances; lossy steps are judged by
        :meth:`judge_lossy`. (Tasks subclass :class:`Task` to share this.)"""
        if precision == "exact":
            return judge_parity(checks, "exact")
        return self.judge_lossy(checks, reference, variant, split)

    def judge_lossy(
        self, checks: Sequence[ParityCheck], reference: Runner, variant: Runner, split: EvalSplit
    ) -> str | None:
        """A lossy step's verdict: by default the lossy tolerances on the parity shapes."""
        return judge_parity(checks, "lossy")

    def quality_texts(self, split: EvalSplit) -> list[str]: ...

    def quality(self, reference: np.ndarray, variant: np.ndarray, split: EvalSplit, seed: int) -> Quality: ...

    def serving_config(self, reference: Reference, max_length: int) -> BaseModel: ...
