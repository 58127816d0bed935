"""`kiln plan` through kiln.cli.main: JSON, tables with estimate labels, clean failures (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.cli import main

LLAMA_405B = str(Path(__file__).parent / "data" / "llama-3.1-405b.json")


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", LLAMA_405B, "--dtype", "int4", "--target", "h100-80gb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] == 405_853_388_800
    assert out["targets"][0]["devices"] == 4


def test_table_labels_estimates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", LLAMA_405B, "--target", "h100-80gb", "cpu-local", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "estimate" in out and "405,853,388,800" in out and "KV cache per token" in out


def test_bad_catalog_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cat.json"
    bad.write_text('{"targets": {"t4": {"memory_gib": "lots"}}}')
    assert main(["plan", LLAMA_405B, "--catalog", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "memory_gib" in err and "Traceback" not in err


def test_unknown_target_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", LLAMA_405B, "--target", "tpu"]) == 2
    assert "unknown target 'tpu'" in capsys.readouterr().err
