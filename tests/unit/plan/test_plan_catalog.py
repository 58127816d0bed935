"""The shipped catalog validates; user files merge over it; bad files fail with clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.plan.catalog import load_catalog
from kiln.plan.errors import PlanError

REQUIRED = {"cpu-local", "t4", "l4", "a10g", "a100-40gb", "a100-80gb", "h100-80gb", "h200", "rtx-4090"}


def test_shipped_catalog() -> None:
    cat = load_catalog()
    assert set(cat.targets) >= REQUIRED
    assert any(t.kind == "cpu" for t in cat.targets.values())
    for name, t in cat.targets.items():
        if t.cloud is not None:
            assert t.cloud.date and t.cloud.source, name
    assert {"torch", "onnxruntime"} <= set(cat.runtimes)


def test_user_file_overrides_a_price_and_adds_a_target(tmp_path: Path) -> None:
    user = {
        "targets": {
            "h100-80gb": {"cloud": {"usd_per_hour": 1.5, "date": "2026-01", "source": "my contract"}},
            "mi300x": {"kind": "gpu", "memory_gib": 192, "bandwidth_gbs": 5300, "fp16_tflops": 1307},
        }
    }
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(user))
    cat = load_catalog(path)
    h100 = cat.target("h100-80gb")
    assert h100.cloud is not None and h100.cloud.usd_per_hour == 1.5
    assert h100.memory_gib == pytest.approx(79.6)  # kept from the shipped entry
    assert cat.target("mi300x").memory_gib == 192


def test_toml_catalog(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[targets.box]\nkind = "cpu"\nmemory_gib = 8\nbandwidth_gbs = 20\nfp32_tflops = 0.2\n')
    assert load_catalog(path).target("box").memory_gib == 8


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"targets": {"x": {"kind": "gpu", "memory_gib": 8}}}', "targets.x.bandwidth_gbs"),
        ('{"targets": {"t4": {"memroy_gib": 8}}}', "memroy_gib"),
        ('{"targets": {"t4": {"cloud": {"usd_per_hour": -1, "date": "d", "source": "s"}}}}', "usd_per_hour"),
        ('{"targets": {"x": {"kind": "gpu", "memory_gib": 8, "bandwidth_gbs": 1}}}', "fp32_tflops"),
    ],
)
def test_bad_catalog_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PlanError, match=message) as err:
        load_catalog(path)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_target(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not exist"):
        load_catalog(tmp_path / "nope.json")
    with pytest.raises(PlanError, match="unknown target 'tpu'.*h100-80gb"):
        load_catalog().target("tpu")
