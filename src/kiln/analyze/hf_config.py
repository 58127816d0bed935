"""Architecture, sizes, context length and tokenizer type from a folder's JSON files or a GGUF header."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from kiln.sources.gguf import GGUFArray, GGUFHeader

_MAX_JSON_BYTES = 64 << 20
_MAX_SANE_LENGTH = 10_000_000  # tokenizer_config uses int(1e30) for "no limit"

_HIDDEN = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim")
_LAYERS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_POSITIONS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(frozen=True)
class ConfigFacts:
    architecture: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    vocab_size: int | None = None
    max_sequence_length: int | None = None
    tokenizer: str | None = None
    license: str | None = None

    def or_else(self, other: ConfigFacts) -> ConfigFacts:
        """These facts, with gaps filled from ``other``."""
        filled = {f.name: getattr(other, f.name) for f in fields(self) if getattr(self, f.name) is None}
        return replace(self, **filled)


def read_json(path: Path, notes: list[str]) -> dict[str, object] | None:
    """A JSON object from ``path``; None (and a note) when it is missing, too large or malformed."""
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_JSON_BYTES:
        notes.append(f"{path.name} is larger than {_MAX_JSON_BYTES >> 20} MB; not read")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path.name} is not valid JSON ({exc}); its facts are missing")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} is not a JSON object; its facts are missing")
        return None
    return data


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _first_int(config: dict[str, object], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        v = _int(config.get(key))
        if v is not None:
            return v
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _config_facts(config: dict[str, object]) -> ConfigFacts:
    archs = config.get("architectures")
    architecture = _str(archs[0]) if isinstance(archs, list) and archs else None
    facts = ConfigFacts(
        architecture=architecture,
        model_type=_str(config.get("model_type")),
        hidden_size=_first_int(config, _HIDDEN),
        num_layers=_first_int(config, _LAYERS),
        num_heads=_first_int(config, _HEADS),
        vocab_size=_int(config.get("vocab_size")),
        max_sequence_length=_first_int(config, _POSITIONS),
    )
    text_config = config.get("text_config")  # multimodal configs nest the language model's sizes
    if isinstance(text_config, dict):
        facts = facts.or_else(_config_facts(text_config))
    return facts


def _tokenizer_type(folder: Path, notes: list[str]) -> str | None:
    tok = read_json(folder / "tokenizer.json", notes)
    if tok is not None:
        model = tok.get("model")
        if isinstance(model, dict) and _str(model.get("type")):
            return str(model["type"])
    tok_config = read_json(folder / "tokenizer_config.json", notes) or {}
    return _str(tok_config.get("tokenizer_class"))


def read_folder_facts(folder: Path, notes: list[str]) -> ConfigFacts:
    """Facts from config.json, sentence_bert_config.json, tokenizer.json and tokenizer_config.json."""
    config = read_json(folder / "config.json", notes) or {}
    facts = _config_facts(config)

    st_config = read_json(folder / "sentence_bert_config.json", notes) or {}
    st_length = _int(st_config.get("max_seq_length"))
    tok_config = read_json(folder / "tokenizer_config.json", notes) or {}
    tok_length = _int(tok_config.get("model_max_length"))
    if tok_length is not None and tok_length > _MAX_SANE_LENGTH:
        tok_length = None
    max_len = st_length or facts.max_sequence_length or tok_length

    lic = config.get("license")
    return replace(
        facts,
        max_sequence_length=max_len,
        tokenizer=_tokenizer_type(folder, notes),
        license=lic if isinstance(lic, str) else None,
    )


def gguf_facts(header: GGUFHeader) -> ConfigFacts:
    """Facts from GGUF metadata (``general.*``, ``{arch}.*``, ``tokenizer.ggml.*``)."""
    meta = header.metadata
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = tokens.length if isinstance(tokens, GGUFArray) else None
    arch = header.architecture
    return ConfigFacts(
        architecture=arch,
        model_type=arch,
        hidden_size=_int(header.arch_value("embedding_length")),
        num_layers=_int(header.arch_value("block_count")),
        num_heads=_int(header.arch_value("attention.head_count")),
        vocab_size=vocab or _int(header.arch_value("vocab_size")),
        max_sequence_length=_int(header.arch_value("context_length")),
        tokenizer=_str(meta.get("tokenizer.ggml.model")),
        license=_str(meta.get("general.license")),
    )
