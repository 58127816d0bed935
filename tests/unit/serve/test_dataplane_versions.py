"""DataPlane versions: routing to the stable version, canary weights (seeded), atomic swap and draining."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections import Counter
from collections.abc import Sequence

import anyio
import numpy as np
import pytest

from _fixtures.held_model import Held
from kiln.errors import UnknownModelError
from kiln.serve.dataplane import Canary, DataPlane, ModelInfo, TensorSpec, version_key


class Constant:
    """Every row is ``[value, value]``: the answer tells which version computed it."""

    def __init__(self, value: float) -> None:
        self.value = value

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.full((len(texts), 2), self.value, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [1 for _ in texts]


def info(version: str, name: str = "m", aliases: frozenset[str] = frozenset({"m-alias"})) -> ModelInfo:
    return ModelInfo(
        name=name,
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, 2)),),
        aliases=aliases,
        version=version,
    )


def two_versions(rng: random.Random | None = None) -> DataPlane:
    dp = DataPlane(rng=rng)
    dp.add(info("1"), Constant(1.0))
    dp.add(info("2"), Constant(2.0))
    return dp


def test_version_order_is_numeric() -> None:
    assert sorted(["10", "9", "b", "1", "a"], key=version_key) == ["1", "9", "10", "a", "b"]


def test_unversioned_requests_go_to_the_highest_version() -> None:
    dp = two_versions()
    assert dp.loaded_versions() == {"m": ["1", "2"]}
    assert dp.resolve("m").version == "2" and dp.resolve("m-alias").version == "2"
    assert dp.resolve("m", "1").versions == ("1", "2")
    assert dp.infer("m", ["x"])[0, 0] == 2.0
    assert dp.infer("m", ["x"], version="1")[0, 0] == 1.0
    assert dp.is_ready("m", "1") and dp.is_ready("m", "2")
    with pytest.raises(UnknownModelError, match="no version '3' loaded; versions: 1, 2"):
        dp.is_ready("m", "3")
    assert [i.version for i in dp.models()] == ["2"]


def test_ainfer_reports_the_version_that_answered() -> None:
    dp = two_versions()

    async def main() -> tuple[str, str]:
        routed = await dp.ainfer("m", ["x"])
        pinned = await dp.ainfer("m", ["x"], version="1")
        return routed.version, pinned.version

    assert anyio.run(main) == ("2", "1")
    dp.stop()


def test_canary_weight_with_a_seeded_rng() -> None:
    dp = two_versions(random.Random(7))
    dp.set_canary("m", Canary("2", 0.1))
    picks = Counter(dp.route("m").version for _ in range(2000))
    draws = random.Random(7)
    expected = Counter("2" if draws.random() < 0.1 else "1" for _ in range(2000))
    assert picks == expected  # exactly the seeded draws: the canary gets its weight
    assert 150 < picks["2"] < 250
    assert dp.resolve("m").version == "1"  # metadata describes the stable version
    assert dp.route("m", "2").version == "2"  # a pinned version is never split
    dp.set_canary("m", None)
    assert {dp.route("m").version for _ in range(50)} == {"2"}


def test_a_canary_alone_takes_every_request() -> None:
    dp = DataPlane(rng=random.Random(0))
    dp.add(info("2"), Constant(2.0))
    dp.set_canary("m", Canary("2", 0.01))
    assert {dp.route("m").version for _ in range(50)} == {"2"}
    with pytest.raises(ValueError, match="between 0 and 1"):
        Canary("2", 1.0)


def test_install_switches_atomically_and_the_old_version_drains() -> None:
    dp = DataPlane()
    held = Held(Constant(1.0))
    dp.add(info("1"), held)
    results: list[float] = []

    async def main() -> None:
        async def call() -> None:
            results.append(float((await dp.ainfer("m", ["x"])).embeddings[0, 0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(10):
                while not held.started.is_set():
                    await anyio.sleep(0.001)
            retired = dp.install(info("1"), Constant(5.0))  # same version, new model: a reload
            assert retired is not None and retired.version == "1"
            tg.start_soon(call)  # routed to the new model (it runs once the held batch is done)
            drained = threading.Thread(target=retired.drain)
            drained.start()
            await anyio.sleep(0.01)
            assert drained.is_alive()  # waits for the request the old model still holds
            held.release.set()
            await anyio.to_thread.run_sync(drained.join, 10)
            assert not drained.is_alive()

    anyio.run(main)
    assert sorted(results) == [1.0, 5.0]  # the in-flight request finished on the old model, no error
    dp.stop()


def test_remove_unloads_and_says_so() -> None:
    dp = two_versions()
    (retired,) = dp.remove("m-alias", ["2"])
    retired.drain()
    assert dp.loaded_versions() == {"m": ["1"]} and dp.resolve("m").version == "1"
    with pytest.raises(UnknownModelError, match="no version '2' loaded"):
        dp.infer("m", ["x"], version="2")
    with pytest.raises(UnknownModelError, match="no version '9'"):
        dp.remove("m", ["9"])
    for r in dp.remove("m"):
        r.drain()
    assert dp.model_names == [] and not dp.is_ready()
    for name in ("m", "m-alias"):
        with pytest.raises(UnknownModelError, match=f"model '{name}' is unloaded; load it again"):
            dp.infer(name, ["x"])
    with pytest.raises(UnknownModelError, match="unknown model 'other'"):
        dp.infer("other", ["x"])
    dp.add(info("3"), Constant(3.0))  # loaded again: served, no longer "unloaded"
    assert dp.infer("m-alias", ["x"])[0, 0] == 3.0


def test_aliases_follow_the_loaded_versions() -> None:
    dp = DataPlane()
    dp.add(info("1", aliases=frozenset({"old-name"})), Constant(1.0))
    dp.add(dataclasses.replace(info("2"), aliases=frozenset({"new-name"})), Constant(2.0))
    assert dp.resolve("old-name").name == dp.resolve("new-name").name == "m"
    for r in dp.remove("m", ["1"]):
        r.drain()
    assert dp.resolve("new-name").name == "m"
    with pytest.raises(UnknownModelError):
        dp.resolve("old-name")


def test_queue_depth_is_observed_per_version_and_summed_per_model() -> None:
    seen: list[tuple[str, str, int]] = []
    dp = DataPlane(queue_observer=lambda name, version, depth: seen.append((name, version, depth)))
    dp.add(info("1"), Constant(1.0))
    dp.add(info("2"), Constant(2.0))
    assert dp.queue_depth("m") == 0

    async def main() -> None:
        await dp.ainfer("m", ["a", "b"], version="1")

    anyio.run(main)
    assert seen and {(name, version) for name, version, _ in seen} == {("m", "1")}
    assert seen[-1] == ("m", "1", 0)
    assert max(depth for _, _, depth in seen) == 2
    assert dp.queue_depth("m") == 0
    dp.stop()
