"""DataPlane.ainfer through the batcher: the tiny fp32 bundle gives the per-request answer to 1e-5."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest

from _fixtures.held_model import Held
from _fixtures.tiny_bundle import tiny_reference_embeddings
from kiln.bundle.load import load_bundle
from kiln.errors import OverloadedError
from kiln.serve.batching import BatchConfig
from kiln.serve.dataplane import DataPlane, Inference, ModelInfo, TensorSpec
from kiln.serve.models import load_embed_model

TEXTS = [
    "the quick brown fox",
    "hello",
    "kiln serves embeddings fast and small with a good film",
    "a cat sat on the mat",
    "love",
    "the lazy dog was not great",
    "terrible movie",
    "hello world the quick brown fox jumps over the lazy dog again and again",
]


def tiny_plane(bundle: Path, **knobs: int | float) -> tuple[DataPlane, Held, list[tuple[str, int]]]:
    batches: list[tuple[str, int]] = []
    dp = DataPlane(
        batching=BatchConfig(**knobs),  # type: ignore[arg-type]
        observer=lambda name, _v, n, _s: batches.append((name, n)),
    )
    info, model = load_embed_model(load_bundle(bundle))
    held = Held(model)
    dp.add(info, held)
    return dp, held, batches


def test_concurrent_requests_match_per_request_results(tiny_bundle: Path) -> None:
    dp, held, batches = tiny_plane(tiny_bundle, max_batch_size=8)
    requests = [TEXTS[i % len(TEXTS) : i % len(TEXTS) + 1 + i % 3] for i in range(40)]
    answers: dict[int, Inference] = {}

    async def main() -> None:
        async def send(i: int) -> None:
            answers[i] = await dp.ainfer("tiny-embed", requests[i], with_tokens=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, 0)
            with anyio.fail_after(10):
                while not held.started.is_set():
                    await anyio.sleep(0.001)
            for i in range(1, len(requests)):
                tg.start_soon(send, i)
            queued = sum(len(r) for r in requests[1:])
            with anyio.fail_after(10):
                while dp.queue_depth("tiny-embed") < queued:
                    await anyio.sleep(0.001)
            held.release.set()

    anyio.run(main)
    dp.stop()
    sizes = [n for _, n in batches]
    for i, texts in enumerate(requests):
        alone = dp.infer("tiny-embed", texts)
        np.testing.assert_allclose(answers[i].embeddings, alone, atol=1e-5)
        np.testing.assert_allclose(answers[i].embeddings, tiny_reference_embeddings(texts), atol=1e-5)
        assert answers[i].prompt_tokens == sum(len(t.split()) + 2 for t in texts)
    assert sizes[0] == len(requests[0])
    assert sum(sizes) == sum(len(r) for r in requests)
    assert max(sizes) == 8  # texts of different requests shared calls, at most max_batch_size at once
    assert len(sizes) < len(requests)


def test_usage_is_left_out_unless_asked_for(tiny_bundle: Path) -> None:
    dp, held, _ = tiny_plane(tiny_bundle)
    held.release.set()
    result = anyio.run(lambda: dp.ainfer("tiny-embed", ["hello world"]))
    dp.stop()
    assert result.prompt_tokens is None
    assert result.embeddings.dtype == np.float32 and result.embeddings.shape == (1, 8)


class Recording:
    """Records overlapping calls across instances (a shared counter)."""

    active = 0
    most = 0
    lock = threading.Lock()

    def __init__(self) -> None:
        self.started = threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
        self.started.set()
        threading.Event().wait(0.01)
        with cls.lock:
            cls.active -= 1
        return np.ones((len(texts), 2), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [1] * len(texts)


def info(name: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, 2)),),
    )


def test_models_never_compute_at_the_same_time() -> None:
    depths: list[tuple[str, int]] = []
    dp = DataPlane(queue_observer=lambda name, _v, depth: depths.append((name, depth)))
    dp.add(info("a"), Recording())
    dp.add(info("b"), Recording())
    dp.start()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(dp.ainfer, "ab"[i % 2], [f"text {i}"])

    anyio.run(main)
    dp.stop()
    assert Recording.most == 1
    assert {name for name, _ in depths} == {"a", "b"}
    assert dp.queue_depth("a") == dp.queue_depth("b") == 0


class Gate:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.started.set()
        assert self.release.wait(10)
        return np.ones((len(texts), 2), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [1] * len(texts)


def test_ainfer_raises_overloaded_when_the_queue_is_full() -> None:
    gate = Gate()
    dp = DataPlane(batching=BatchConfig(max_queue=2))
    dp.add(info("g"), gate)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dp.ainfer, "g", ["running"])
            with anyio.fail_after(10):
                while not gate.started.is_set():
                    await anyio.sleep(0.001)
            tg.start_soon(dp.ainfer, "g", ["a", "b"])
            with anyio.fail_after(10):
                while dp.queue_depth("g") < 2:
                    await anyio.sleep(0.001)
            with pytest.raises(OverloadedError, match="'g' is overloaded"):
                await dp.ainfer("g", ["c"])
            gate.release.set()

    anyio.run(main)
    dp.stop()
