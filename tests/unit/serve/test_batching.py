"""TextBatcher: texts of concurrent requests share model calls, bucketed by length, under a bounded queue.

No timings are asserted: a ``GatedRunner`` holds its first call until released, so the requests sent
meanwhile are queued deterministically; waits are only upper bounds (``fail_after``) against hangs.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import anyio
import numpy as np
import pytest

from kiln.errors import OverloadedError
from kiln.serve.batching import (
    MIN_BUCKET,
    BatchConfig,
    BatchResult,
    TextBatcher,
    bucket_of,
    counted,
)
from kiln.settings import Settings


def tokens(texts: list[str]) -> list[int]:
    """One token per word, plus two (like [CLS] ... [SEP])."""
    return [len(t.split()) + 2 for t in texts]


class GatedRunner:
    """Rows are [number of words, thread id % 1000]; the first call waits for ``release``."""

    def __init__(self, gate_first: bool = True) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[int] = set()
        self.started = threading.Event()
        self.release = threading.Event()
        if not gate_first:
            self.release.set()

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.threads.add(threading.get_ident())
        self.started.set()
        assert self.release.wait(10), "never released"
        return np.asarray([[len(t.split()), 0.0] for t in texts], dtype=np.float32)


def make(runner: GatedRunner, depths: list[int] | None = None, **knobs: float) -> TextBatcher:
    config = BatchConfig(**knobs)  # type: ignore[arg-type]
    return TextBatcher(
        "m", runner, counted(tokens), config, on_queue=None if depths is None else depths.append
    )


async def until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.001)


def run(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main)


Queue = Callable[[str, list[str], int], Awaitable[None]]


def run_held(
    batcher: TextBatcher,
    runner: GatedRunner,
    steps: Callable[[Queue], Awaitable[None]],
    first: tuple[str, list[str]] = ("first", ["gate"]),
) -> dict[str, BatchResult]:
    """Send ``first`` and wait until the runner holds it; run ``steps``; release the runner; answers by key.

    In ``steps``, ``await queue(key, texts, depth)`` sends a request, then waits until that depth.
    """
    results: dict[str, BatchResult] = {}

    async def main() -> None:
        async def send(key: str, texts: list[str]) -> None:
            results[key] = await batcher.submit(texts)

        async with anyio.create_task_group() as tg:

            async def queue(key: str, texts: list[str], depth: int) -> None:
                tg.start_soon(send, key, texts)
                await until(lambda: batcher.depth == depth)

            tg.start_soon(send, *first)
            await until(runner.started.is_set)
            await steps(queue)
            runner.release.set()

    run(main)
    return results


def words(n: int, word: str = "w") -> str:
    return " ".join([word] * n)


def test_buckets_are_powers_of_two_from_16() -> None:
    assert [bucket_of(n) for n in (0, 1, 5, 16, 17, 32, 33, 100, 512)] == [
        MIN_BUCKET,
        16,
        16,
        16,
        32,
        32,
        64,
        128,
        512,
    ]


def test_config_validates_and_comes_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchConfig(max_wait_ms=-1)
    with pytest.raises(ValueError, match="max_queue"):
        BatchConfig(max_queue=0)
    monkeypatch.setenv("KILN_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("KILN_MAX_WAIT_MS", "0.5")
    monkeypatch.setenv("KILN_MAX_QUEUE", "100")
    assert BatchConfig.from_settings(Settings.from_env()) == BatchConfig(8, 0.5, 100)
    assert BatchConfig.from_settings(Settings()) == BatchConfig()
    monkeypatch.setenv("KILN_MAX_WAIT_MS", "soon")
    with pytest.raises(ValueError, match="KILN_MAX_WAIT_MS='soon' is not a number"):
        Settings.from_env()


def test_one_request_runs_at_once_on_the_worker_thread() -> None:
    runner = GatedRunner(gate_first=False)
    batcher = make(runner, max_wait_ms=10_000)  # a lone request never waits for company

    async def main() -> None:
        with anyio.fail_after(5):
            result = await batcher.submit(["a b", "c"])
        np.testing.assert_array_equal(result.embeddings[:, 0], [2, 1])
        assert result.tokens == [4, 3]
        assert threading.get_ident() not in runner.threads

    run(main)
    batcher.stop()
    assert not batcher.running


def test_queued_requests_share_one_call_and_get_their_own_rows_in_order() -> None:
    runner = GatedRunner()
    depths: list[int] = []
    batcher = make(runner, depths)

    async def steps(queue: Queue) -> None:
        await queue("b", ["two words", "three words here"], 2)
        await queue("c", ["four words are here", "x", "five words are here now"], 5)

    results = run_held(batcher, runner, steps, first=("a", ["one"]))
    batcher.stop()
    assert runner.calls == [
        ["one"],
        ["two words", "three words here", "four words are here", "x", "five words are here now"],
    ]
    np.testing.assert_array_equal(results["a"].embeddings[:, 0], [1])
    np.testing.assert_array_equal(results["b"].embeddings[:, 0], [2, 3])
    np.testing.assert_array_equal(results["c"].embeddings[:, 0], [4, 1, 5])
    assert results["c"].tokens == [6, 3, 7]
    assert depths[-1] == 0 and max(depths) == 5


def test_batches_hold_at_most_max_batch_size_texts_oldest_first() -> None:
    runner = GatedRunner()
    batcher = make(runner, max_batch_size=2)

    async def steps(queue: Queue) -> None:
        await queue("a", ["a1", "a2", "a3"], 3)
        await queue("b", ["b1", "b2"], 5)

    results = run_held(batcher, runner, steps)
    batcher.stop()
    assert runner.calls == [["gate"], ["a1", "a2"], ["a3", "b1"], ["b2"]]
    assert results["a"].embeddings.shape == (3, 2)
    assert results["b"].embeddings.shape == (2, 2)


def test_short_texts_are_not_batched_with_long_ones() -> None:
    runner = GatedRunner()
    batcher = make(runner)
    short, long = "short text", words(40)  # 4 and 42 tokens: buckets 16 and 64

    async def steps(queue: Queue) -> None:
        await queue("mixed", [short, long, short], 3)
        await queue("long", [long], 4)
        await queue("short", [short], 5)

    results = run_held(batcher, runner, steps)
    batcher.stop()
    # the oldest waiting text's bucket goes first, then the next oldest's
    assert runner.calls == [["gate"], [short, short, short], [long, long]]
    np.testing.assert_array_equal(results["mixed"].embeddings[:, 0], [2, 40, 2])
    assert results["mixed"].tokens == [4, 42, 4]
    np.testing.assert_array_equal(results["long"].embeddings[:, 0], [40])


def test_a_full_queue_refuses_at_once_with_a_retry_hint() -> None:
    runner = GatedRunner()
    depths: list[int] = []
    batcher = make(runner, depths, max_queue=4)

    async def steps(queue: Queue) -> None:
        await queue("queued", ["a", "b", "c"], 3)
        with pytest.raises(OverloadedError, match=r"overloaded: 3 texts are queued.*limit is 4") as err:
            await batcher.submit(["d", "e"])
        assert err.value.retry_after >= 1
        assert batcher.depth == 3
        await queue("fits", ["d"], 4)  # exactly fills the queue

    outcome = run_held(batcher, runner, steps)
    assert isinstance(outcome["fits"], BatchResult)
    assert max(depths) == 4 and depths[-1] == 0

    async def big() -> None:  # an idle queue takes a request larger than max_queue
        result = await batcher.submit([f"t{i}" for i in range(6)])
        assert result.embeddings.shape == (6, 2)

    run(big)
    batcher.stop()


def test_a_cancelled_request_is_dropped_before_it_runs() -> None:
    runner = GatedRunner()
    batcher = make(runner)
    results: dict[str, BatchResult] = {}

    async def main() -> None:
        async def send(key: str, texts: list[str]) -> None:
            results[key] = await batcher.submit(texts)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send, "first", ["gate"])
            await until(runner.started.is_set)
            with anyio.CancelScope() as scope:
                tg.start_soon(send, "kept", ["kept"])
                async with anyio.create_task_group() as inner:
                    inner.start_soon(send, "gone", ["gone", "too"])
                    await until(lambda: batcher.depth == 3)
                    scope.cancel()
            runner.release.set()

    run(main)
    batcher.stop()
    assert "gone" not in results and "kept" in results
    assert all("gone" not in call for call in runner.calls)
    assert batcher.depth == 0


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    calls: list[list[str]] = []

    def flaky(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        if "boom" in texts:
            raise ValueError("model exploded")
        return np.zeros((len(texts), 2), dtype=np.float32)

    batcher = TextBatcher("m", flaky, counted(tokens))

    async def main() -> None:
        with pytest.raises(ValueError, match="model exploded"):
            await batcher.submit(["boom"])
        assert (await batcher.submit(["fine"])).embeddings.shape == (1, 2)

    run(main)
    batcher.stop()


def test_wrong_row_count_and_counter_errors_reach_the_caller() -> None:
    def short(texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts) - 1, 2), dtype=np.float32)

    def bad_counter(texts: list[str]) -> list[int]:
        if "bad" in texts:
            raise ValueError("cannot tokenize")
        return [1] * len(texts)

    batcher = TextBatcher("m", short, counted(tokens))
    counting = TextBatcher("c", GatedRunner(gate_first=False), counted(bad_counter))

    async def main() -> None:
        with pytest.raises(RuntimeError, match="returned 1 rows for 2 texts"):
            await batcher.submit(["a", "b"])
        with pytest.raises(ValueError, match="cannot tokenize"):
            await counting.submit(["bad"])
        assert counting.depth == 0
        assert (await counting.submit(["good"])).tokens == [1]

    run(main)
    batcher.stop()
    counting.stop()


def test_stop_runs_what_is_queued_and_a_later_request_restarts_the_worker() -> None:
    runner = GatedRunner()
    batcher = make(runner)

    async def steps(queue: Queue) -> None:
        await queue("queued", ["q"], 1)
        stopper = threading.Thread(target=batcher.stop)
        stopper.start()
        runner.release.set()
        await anyio.to_thread.run_sync(stopper.join)

    results = run_held(batcher, runner, steps)  # (it sets the released gate once more)
    assert set(results) == {"first", "queued"}
    assert not batcher.running

    async def again() -> None:
        assert (await batcher.submit(["later"])).embeddings.shape == (1, 2)

    run(again)
    assert batcher.running
    batcher.stop()


def test_one_batcher_answers_requests_from_several_event_loops() -> None:
    runner = GatedRunner()
    batcher = make(runner)
    results: dict[str, BatchResult] = {}

    def loop_thread(key: str, texts: list[str]) -> threading.Thread:
        async def main() -> None:
            results[key] = await batcher.submit(texts)

        thread = threading.Thread(target=anyio.run, args=(main,))
        thread.start()
        return thread

    first = loop_thread("first", ["gate"])
    assert runner.started.wait(10)
    second = loop_thread("second", ["one two"])
    third = loop_thread("third", ["x", "y z"])
    deadline = threading.Event()
    for _ in range(10_000):
        if batcher.depth == 3:
            break
        deadline.wait(0.001)
    runner.release.set()
    for thread in (first, second, third):
        thread.join(10)
    batcher.stop()
    assert runner.calls[0] == ["gate"] and sorted(runner.calls[1]) == ["one two", "x", "y z"]
    np.testing.assert_array_equal(results["second"].embeddings[:, 0], [2])
    np.testing.assert_array_equal(results["third"].embeddings[:, 0], [1, 2])


def test_max_tokens_refuses_only_the_request_with_an_over_long_text() -> None:
    from kiln.errors import InvalidInputError

    runner = GatedRunner()
    depths: list[int] = []
    batcher = TextBatcher("m", runner, counted(tokens), BatchConfig(), on_queue=depths.append, max_tokens=5)
    errors: list[BaseException] = []

    async def long_request() -> None:
        try:
            await batcher.submit(["fine", words(4)])  # 4 words: 6 tokens, over 5
        except InvalidInputError as exc:
            errors.append(exc)

    async def steps(queue: Queue) -> None:
        await queue("ok", ["two words"], 1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_request)
            await until(lambda: batcher.depth == 3)
            runner.release.set()  # both requests are admitted together; only the long one is refused

    results = run_held(batcher, runner, steps, first=("first", ["gate"]))
    batcher.stop()
    assert [str(e) for e in errors] == [
        "text 1 has 6 tokens; model 'm' reads at most 5 "
        "(shorten it, or serve with --text-overflow truncate to cut it to the model's length)"
    ]
    assert runner.calls == [["gate"], ["two words"]]  # the refused request never ran, the other did
    np.testing.assert_array_equal(results["ok"].embeddings[:, 0], [2])
    assert depths[-1] == 0
