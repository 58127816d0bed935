"""Human sizes and counts, and the inspect table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rich.console import Console

from kiln.analyze.facts import ModelFacts, weight_bytes
from kiln.analyze.render import facts_table, human_bytes, human_count


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (90_868_376, "90.9 MB"), (5 * 1000**3, "5.0 GB")],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0"), (999, "999"), (4_650_000, "4.7 M"), (22_713_216, "22.7 M"), (134_515_008, "134.5 M")],
)
def test_human_count(n: int, text: str) -> None:
    assert human_count(n) == text
    assert human_count(7_000_000_000) == "7.0 B"


def test_weight_bytes() -> None:
    assert weight_bytes(22_713_216) == {
        "fp32": 90_852_864,
        "fp16": 45_426_432,
        "bf16": 45_426_432,
        "int8": 22_713_216,
        "int4": 11_356_608,
    }
    assert weight_bytes(3)["int4"] == 2


def _render(facts: ModelFacts) -> str:
    console = Console(record=True, width=200)
    console.print(facts_table(facts))
    return console.export_text()


def test_table_shows_the_facts() -> None:
    facts = ModelFacts(
        path=Path("/m/model"),
        format="hf-folder",
        weight_format="safetensors",
        architecture="BertModel",
        model_type="bert",
        parameters=22_713_216,
        bytes=weight_bytes(22_713_216),
        file_bytes=90_868_376,
        dtype="float32",
        stored_dtypes={"float32": 22_713_216},
        max_sequence_length=256,
        license="apache-2.0",
        license_class="permissive",
        tokenizer="WordPiece",
        weight_files=["model.safetensors"],
    )
    text = _render(facts)
    for expected in (
        "hf-folder (safetensors)",
        "BertModel (bert)",
        "22.7 M (22,713,216)",
        "90.9 MB in 1 file(s)",
        "fp32 90.9 MB",
        "int4 11.4 MB",
        "256",
        "WordPiece",
        "apache-2.0 (permissive)",
        "no findings",
    ):
        assert expected in text


def test_table_shows_findings_and_unknowns() -> None:
    facts = ModelFacts(
        path=Path("/m/evil.bin"),
        format="pickle",
        weight_format="pickle",
        safety=["evil.bin: imports os.system (GLOBAL at byte 2), which is not on the allowlist"],
        notes=["parameters not counted: the checkpoint is not safe to load (see safety)"],
    )
    text = _render(facts)
    assert "imports os.system" in text
    assert re.search(r"parameters\W+unknown", text)
    assert "no findings" not in text
    assert "parameters not counted" in text
