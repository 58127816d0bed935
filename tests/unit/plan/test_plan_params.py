"""Parameter counts from config.json alone, checked against the published sizes of real models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.plan.errors import PlanError
from kiln.plan.params import ArchSpec, count_parameters

DATA = Path(__file__).parent / "data"


def _spec(name: str, **overrides: object) -> ArchSpec:
    config = json.loads((DATA / f"{name}.json").read_text())
    config.update(overrides)
    return ArchSpec.from_config(config)


def test_llama_405b_from_config() -> None:
    spec = _spec("llama-3.1-405b")
    params = count_parameters(spec)
    assert params.total == 405_853_388_800  # ~405.9B
    assert params.active == params.total
    assert {g.name for g in params.groups} >= {"embeddings", "lm_head", "attention", "mlp"}
    assert spec.kv_elements_per_token() * 2 == 504 * 1024  # BF16 KV cache per token


def test_mixtral_total_and_active() -> None:
    params = count_parameters(_spec("mixtral-8x7b"))
    assert params.total == 46_702_792_704  # 46.7B
    assert params.active == 12_879_925_248  # ~12.9B: 2 of 8 experts per token
    experts = next(g for g in params.groups if g.name == "experts")
    assert experts.active * 4 == experts.total


def test_tied_embeddings_have_no_head() -> None:
    tied = count_parameters(_spec("smollm2-135m"))
    assert tied.total == 134_515_008  # SmolLM2-135M
    assert "lm_head" not in {g.name for g in tied.groups}
    untied = count_parameters(_spec("smollm2-135m", tie_word_embeddings=False))
    assert untied.total - tied.total == 49152 * 576


def test_bert_encoder() -> None:
    assert count_parameters(_spec("bert-base-uncased")).total == 109_514_298  # BertForMaskedLM
    base = _spec("bert-base-uncased", architectures=["BertModel"])
    assert count_parameters(base).total == 109_482_240  # BertModel, with pooler
    assert not base.has_kv_cache and base.kv_elements_per_token() == 0


def test_gpt2() -> None:
    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
    assert count_parameters(ArchSpec.from_config(config)).total == 124_439_808


def test_unknown_family_is_labelled() -> None:
    spec = _spec("smollm2-135m", model_type="brand-new")
    assert any("llama-style" in n for n in spec.notes)


def test_missing_sizes_say_which() -> None:
    with pytest.raises(PlanError, match="num_hidden_layers"):
        ArchSpec.from_config(
            {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 9}
        )


def test_kv_heads_must_divide_heads() -> None:
    with pytest.raises(PlanError, match="key/value heads"):
        _spec("smollm2-135m", num_key_value_heads=4)
