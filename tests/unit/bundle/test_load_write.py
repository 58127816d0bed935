import json
from pathlib import Path

import pytest

from kiln.bench.scores import VariantRecord
from kiln.bundle.load import load_bundle
from kiln.bundle.manifest import Manifest, SourceRecord
from kiln.bundle.write import write_bundle
from kiln.errors import BundleError


def _manifest() -> Manifest:
    return Manifest(
        kiln_version="0.1.0",
        created_at="2026-01-01T00:00:00+00:00",
        model_name="m",
        task="embed",
        task_config={"dimension": 4},
        license="apache-2.0",
        source=SourceRecord(kind="local", spec="/x", path="/x"),
        variants=[VariantRecord(name="onnx-fp32", format="onnx", recipe=[{"kind": "export-onnx"}])],
        chosen="onnx-fp32",
        chosen_reason="only one",
        artifact="model.onnx",
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.onnx").write_bytes(b"fake-onnx-bytes")
    (src / "tok.json").write_text("{}")
    return write_bundle(
        tmp_path / "b",
        _manifest(),
        {"model.onnx": src / "m.onnx", "tokenizer.json": src / "tok.json"},
        {"README.md": "# card"},
    )


def test_round_trip_records_every_hash(bundle: Path) -> None:
    b = load_bundle(bundle)
    assert set(b.manifest.files) == {"model.onnx", "tokenizer.json", "README.md"}
    assert b.artifact_path.read_bytes() == b"fake-onnx-bytes"
    assert b.manifest.chosen_variant().name == "onnx-fp32"


def test_tampered_file_is_refused(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes(b"evil")
    with pytest.raises(BundleError, match="modified: model.onnx"):
        load_bundle(bundle)


def test_missing_file_is_refused(bundle: Path) -> None:
    (bundle / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="missing: tokenizer.json"):
        load_bundle(bundle)


def test_manifest_path_escape_is_refused(bundle: Path) -> None:
    data = json.loads((bundle / "kiln.json").read_text())
    data["files"]["../outside"] = "0" * 64
    (bundle / "kiln.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle)


def test_manifest_without_artifact_hash_is_refused(bundle: Path) -> None:
    data = json.loads((bundle / "kiln.json").read_text())
    del data["files"]["model.onnx"]
    (bundle / "kiln.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="does not list a hash"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"kiln_version": 1}', "not a valid kiln manifest"),
        ('{"schema_version": 99}', "upgrade kiln"),
    ],
)
def test_corrupt_manifest(bundle: Path, content: str, match: str) -> None:
    (bundle / "kiln.json").write_text(content)
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle)


def test_wrong_paths(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(tmp_path / "file")
    with pytest.raises(BundleError, match="no kiln.json"):
        load_bundle(tmp_path)


def test_writer_refuses_a_foreign_nonempty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(BundleError, match="not a kiln bundle"):
        write_bundle(tmp_path, _manifest(), {}, {})
    assert (tmp_path / "keep.txt").read_text() == "user data"
