"""``kiln build`` and ``kiln run`` from the command line: errors users cause, the cached main job."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kiln.cli import main


def test_build_wrong_path_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["build", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_build_refuses_a_decoder_for_embed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tmp_path / "gpt"
    model.mkdir()
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    (model / "config.json").write_text(json.dumps(config))
    assert main(["build", str(model), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "decoder" in err and "encoder" in err


def test_build_refuses_a_single_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\x00" * 16)
    assert main(["build", str(f), "--out", str(tmp_path / "b")]) == 2
    assert "error:" in capsys.readouterr().err


def test_serve_refuses_a_missing_bundle(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_run_reuses_a_cached_bundle(
    default_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    shutil.copytree(default_bundle, home / "bundles" / "all-MiniLM-L6-v2")
    monkeypatch.setenv("KILN_HOME", str(home))
    assert main(["run", "--no-serve"]) == 0
    out = capsys.readouterr().out
    assert "using cached bundle" in out and "onnx-int8-dynamic" in out


@pytest.mark.slow
def test_run_rebuilds_a_tampered_cache(
    default_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from kiln import default_job

    home = tmp_path / "home"
    cached = home / "bundles" / "all-MiniLM-L6-v2"
    shutil.copytree(default_bundle, cached)
    (cached / "model.onnx").write_bytes(b"tampered")
    monkeypatch.setenv("KILN_HOME", str(home))
    console = Console(record=True, width=200)
    assert default_job.cached_bundle(cached, console) is None
    assert "modified: model.onnx" in console.export_text()
