"""The runtime's per-call overhead: added once per CPU forward call, never on GPU targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.plan.catalog import Catalog, load_catalog
from kiln.plan.plan import make_plan

DATA = Path(__file__).parent / "data"


def _with_overhead(ms: float) -> Catalog:
    cat = load_catalog()
    runtimes = {n: rt.model_copy(update={"call_overhead_ms": ms}) for n, rt in cat.runtimes.items()}
    return cat.model_copy(update={"runtimes": runtimes})


def test_overhead_adds_fixed_seconds_per_cpu_call() -> None:
    kw: dict[str, Any] = {"batch": 1, "context": 16, "targets": ["cpu-local", "t4"]}
    bare = make_plan(DATA / "bert-base-uncased.json", catalog=_with_overhead(0), **kw)
    slow = make_plan(DATA / "bert-base-uncased.json", catalog=_with_overhead(20), **kw)
    cpu0, cpu1 = bare.targets[0].throughput, slow.targets[0].throughput
    assert cpu0 is not None and cpu1 is not None
    assert cpu1.request_seconds_batch1 == pytest.approx(cpu0.request_seconds_batch1 + 0.020)
    assert any("overhead" in n for n in cpu1.notes)
    gpu0, gpu1 = bare.targets[1].throughput, slow.targets[1].throughput
    assert gpu0 is not None and gpu1 is not None and gpu1.requests_per_s == gpu0.requests_per_s


def test_decoder_overhead_per_decode_step() -> None:
    kw: dict[str, Any] = {"batch": 1, "context": 64, "output_tokens": 8, "targets": ["cpu-local"]}
    bare = make_plan(DATA / "smollm2-135m.json", catalog=_with_overhead(0), **kw).targets[0].throughput
    slow = make_plan(DATA / "smollm2-135m.json", catalog=_with_overhead(10), **kw).targets[0].throughput
    assert bare is not None and slow is not None
    assert bare.decode_tokens_per_s is not None and slow.decode_tokens_per_s is not None
    assert 1 / slow.decode_tokens_per_s == pytest.approx(1 / bare.decode_tokens_per_s + 0.010)
    # one prefill + 8 decode steps per request
    assert slow.request_seconds_batch1 == pytest.approx(bare.request_seconds_batch1 + 9 * 0.010)
