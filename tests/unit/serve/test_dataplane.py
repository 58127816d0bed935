from __future__ import annotations

import threading
from collections.abc import Sequence

import anyio
import numpy as np
import pytest

from kiln.errors import InvalidInputError, PayloadTooLargeError, UnknownModelError
from kiln.serve.dataplane import DataPlane, Inference, Limits, ModelInfo, TensorSpec
from kiln.settings import Settings


class FakeModel:
    """Row i of the output is [len(text), i, 1]; records the thread each batch ran on."""

    def __init__(self, dim: int = 3) -> None:
        self.dim = dim
        self.threads: list[int] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.threads.append(threading.get_ident())
        rows = [[len(t), i, 1.0] + [0.0] * (self.dim - 3) for i, t in enumerate(texts)]
        return np.asarray(rows, dtype=np.float64)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]


def fake_info(
    name: str = "fake", dim: int = 3, aliases: frozenset[str] = frozenset({"fake-alias"})
) -> ModelInfo:
    return ModelInfo(
        name=name,
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, dim)),),
        aliases=aliases,
    )


@pytest.fixture
def plane() -> tuple[DataPlane, FakeModel, list[tuple[str, int, float]]]:
    seen: list[tuple[str, str, int, float]] = []
    dp = DataPlane(Limits(max_batch_items=3, max_text_chars=10), observer=lambda *a: seen.append(a))
    model = FakeModel()
    dp.add(fake_info(), model)
    return dp, model, seen


def test_limits_come_from_settings() -> None:
    limits = Limits.from_settings(Settings(max_batch_items=7, max_text_chars=11))
    assert (limits.max_batch_items, limits.max_text_chars) == (7, 11)


def test_resolve_by_name_alias_and_version(plane) -> None:
    dp, _, _ = plane
    assert dp.resolve("fake").name == "fake"
    assert dp.resolve("fake-alias").name == "fake"
    assert dp.resolve("fake", "1").dimension == 3
    assert dp.model_names == ["fake"]
    with pytest.raises(UnknownModelError, match="unknown model 'other'.*'fake'"):
        dp.resolve("other")
    with pytest.raises(UnknownModelError, match="no version '2'"):
        dp.resolve("fake", "2")


def test_aliases_are_best_effort_and_names_win(plane) -> None:
    dp, _, _ = plane
    dp.add(fake_info("second", aliases=frozenset({"fake-alias", "fake", "second-alias"})), FakeModel())
    assert dp.model_names == ["fake", "second"]
    assert dp.resolve("fake-alias").name == "fake"  # the first model keeps its alias
    assert dp.resolve("fake").name == "fake"  # a name always means its own model
    assert dp.resolve("second-alias").name == "second"
    dp.add(fake_info("fake-alias", aliases=frozenset()), FakeModel())  # a new name takes over an alias
    assert dp.resolve("fake-alias").name == "fake-alias"


def test_readiness_and_drain(plane) -> None:
    dp, _, _ = plane
    assert dp.is_live()
    assert dp.is_ready()
    assert dp.is_ready("fake-alias", "1")
    with pytest.raises(UnknownModelError):
        dp.is_ready("nope")
    dp.drain()
    assert not dp.is_ready()
    assert not DataPlane().is_ready()


@pytest.mark.parametrize(
    ("texts", "error", "match"),
    [
        ([], InvalidInputError, "no texts"),
        (["a", "b", "c", "d"], PayloadTooLargeError, "4 texts.*limit is 3"),
        (["ok", ""], InvalidInputError, "text 1 is empty"),
        (["x" * 11], InvalidInputError, "text 0 has 11 characters; the limit is 10"),
        ([b"bytes"], InvalidInputError, "text 0 is bytes"),
        (["fine", "a\ud800b"], InvalidInputError, "text 1 is not valid Unicode"),
    ],
)
def test_check_texts_rejects(plane, texts, error, match) -> None:
    dp, model, seen = plane
    with pytest.raises(error, match=match):
        dp.infer("fake", texts)
    assert model.threads == [] and seen == []


def test_infer_returns_float32_in_order_and_observes(plane) -> None:
    dp, _, seen = plane
    out = dp.infer("fake-alias", ["a", "bbb", "x" * 10])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], [1, 3, 10])
    np.testing.assert_array_equal(out[:, 1], [0, 1, 2])
    assert [(m, v, n) for m, v, n, _ in seen] == [("fake", "1", 3)]
    assert seen[0][3] >= 0


def test_ainfer_runs_in_a_worker_thread_and_counts_tokens(plane) -> None:
    dp, model, _ = plane

    async def main() -> tuple[Inference, int]:
        result = await dp.ainfer("fake", ["one two", "three"], with_tokens=True)
        return result, threading.get_ident()

    result, loop_thread = anyio.run(main)
    assert result.prompt_tokens == (2 + 2) + (1 + 2)
    assert result.embeddings.shape == (2, 3)
    assert model.threads and model.threads[0] != loop_thread


def test_ainfer_validates_before_taking_a_thread(plane) -> None:
    dp, model, _ = plane

    async def main() -> None:
        await dp.ainfer("fake", [])

    with pytest.raises(InvalidInputError):
        anyio.run(main)
    with pytest.raises(UnknownModelError):
        anyio.run(lambda: dp.ainfer("nope", ["a"]))
    assert model.threads == []


def test_a_model_returning_the_wrong_shape_is_a_server_error() -> None:
    dp = DataPlane()
    dp.add(fake_info(dim=4), FakeModel(dim=3))
    with pytest.raises(RuntimeError, match=r"expected \(1, 4\)"):
        dp.infer("fake", ["a"])
