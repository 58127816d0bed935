"""Tiny model files for tests, written byte by byte or with the format's own library; none are loaded."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np

# A pickle that would call os.system("echo pwned") if loaded, written as raw opcodes (protocol 2, GLOBAL).
EVIL_GLOBAL_PICKLE = b"\x80\x02cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03."
# The same call through STACK_GLOBAL (protocol 4), its strings memoised then fetched back with BINGET.
EVIL_STACK_GLOBAL_PICKLE = (
    b"\x80\x04"  # PROTO 4
    b"\x8c\x02os\x94"  # SHORT_BINUNICODE "os", MEMOIZE (memo 0)
    b"\x8c\x06system\x94"  # SHORT_BINUNICODE "system", MEMOIZE (memo 1)
    b"0"  # POP
    b"0"  # POP
    b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL -> os.system
    b"\x8c\x0aecho pwned\x85R."  # args tuple, REDUCE, STOP
)
# STACK_GLOBAL whose arguments are not plain strings: the scanner cannot tell what it imports.
OPAQUE_STACK_GLOBAL_PICKLE = b"\x80\x04N\x8c\x06system\x93."


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def tiny_bert_tensors() -> dict[str, np.ndarray]:
    """6*4 + 4*4 + 4 = 44 parameters, plus an int64 position_ids buffer (8 elements) that is not one."""
    return {
        "embeddings.word_embeddings.weight": np.zeros((6, 4), np.float32),
        "encoder.layer.0.dense.weight": np.zeros((4, 4), np.float16),
        "encoder.layer.0.dense.bias": np.zeros((4,), np.float32),
        "embeddings.position_ids": np.arange(8, dtype=np.int64).reshape(1, 8),
    }


def write_hf_folder(folder: Path, *, license_id: str | None = "mit") -> Path:
    """A Hugging Face folder: config, tokenizer files, model card and tiny safetensors weights."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 6,
        "max_position_embeddings": 8,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 1000000000000000019884624838656})
    )
    if license_id is not None:
        (folder / "README.md").write_text(
            f"---\nlanguage: en\nlicense: {license_id}\ntags:\n- test\n---\n# tiny\n"
        )
    write_safetensors(folder / "model.safetensors", tiny_bert_tensors())
    return folder


def write_torch_zip(path: Path, data_pkl: bytes) -> Path:
    """A zip laid out like torch.save's: <name>/data.pkl, <name>/version."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/version", "3\n")
    return path


def write_onnx(path: Path, *, external_location: str | None = None) -> Path:
    """MatMul with W (4x3 float32), B (3 float16), an int64 shape constant; W may use external data."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    if external_location is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        entry = w.external_data.add()
        entry.key, entry.value = "location", external_location
    b = numpy_helper.from_array(np.ones((3,), np.float16), "B")
    shape = numpy_helper.from_array(np.array([1, 3], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w, b, shape],
    )
    model = helper.make_model(graph, producer_name="kiln-test", opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _gguf_str(s: str, bo: str) -> bytes:
    raw = s.encode()
    return struct.pack(bo + "Q", len(raw)) + raw


def gguf_bytes(*, byteorder: str = "<", version: int = 3) -> bytes:
    """A GGUF v3 file: llama metadata, a 3-token vocabulary, an F32 (4x8) and a Q4_0 (32x4) tensor.

    Parameters: 32 + 128 = 160. Data: 128 bytes F32 at offset 0, 4 Q4_0 blocks x 18 bytes at offset 128.
    """
    bo = byteorder

    def kv(key: str, vtype: int, payload: bytes) -> bytes:
        return _gguf_str(key, bo) + struct.pack(bo + "I", vtype) + payload

    u32 = lambda v: struct.pack(bo + "I", v)  # noqa: E731
    metadata = [
        kv("general.architecture", 8, _gguf_str("llama", bo)),
        kv("general.alignment", 4, u32(32)),
        kv("general.license", 8, _gguf_str("llama3", bo)),
        kv("llama.context_length", 4, u32(2048)),
        kv("llama.embedding_length", 4, u32(8)),
        kv("llama.block_count", 4, u32(1)),
        kv("llama.attention.head_count", 4, u32(2)),
        kv("tokenizer.ggml.model", 8, _gguf_str("llama", bo)),
        kv(
            "tokenizer.ggml.tokens",
            9,
            u32(8) + struct.pack(bo + "Q", 3) + b"".join(_gguf_str(t, bo) for t in ("<s>", "a", "b")),
        ),
        kv(
            "tokenizer.ggml.scores",
            9,
            u32(6) + struct.pack(bo + "Q", 100) + struct.pack(bo + "100f", *[0.0] * 100),
        ),
    ]
    tensors = [("token_embd.weight", (8, 4), 0, 0), ("blk.0.attn_q.weight", (32, 4), 2, 128)]
    infos = b"".join(
        _gguf_str(name, bo)
        + u32(len(shape))
        + b"".join(struct.pack(bo + "Q", d) for d in shape)
        + u32(gtype)
        + struct.pack(bo + "Q", offset)
        for name, shape, gtype, offset in tensors
    )
    head = (
        b"GGUF"
        + u32(version)
        + struct.pack(bo + "Q", len(tensors))
        + struct.pack(bo + "Q", len(metadata))
        + b"".join(metadata)
        + infos
    )
    head += b"\x00" * (-len(head) % 32)
    return head + b"\x00" * (128 + 4 * 18)


def write_gguf(path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gguf_bytes(**kwargs))  # type: ignore[arg-type]
    return path
