"""License ids from model cards and config.json, and their classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.analyze.license import classify_license, license_from_card, read_license


@pytest.mark.parametrize(
    ("license_id", "cls"),
    [
        ("apache-2.0", "permissive"),
        ("Apache-2.0", "permissive"),
        ("mit", "permissive"),
        ("bsd-3-clause", "permissive"),
        ("cc-by-4.0", "permissive"),
        ("gpl-3.0", "copyleft"),
        ("agpl-3.0", "copyleft"),
        ("lgpl-2.1", "copyleft"),
        ("cc-by-sa-4.0", "copyleft"),
        ("cc-by-nc-4.0", "non-commercial"),
        ("cc-by-nc-sa-4.0", "non-commercial"),
        ("llama3.1", "restricted"),
        ("llama2", "restricted"),
        ("gemma", "restricted"),
        ("openrail++", "restricted"),
        ("cc-by-nd-4.0", "restricted"),
        ("other", "unknown"),
        ("unknown", "unknown"),
        ("my-own-license", "unknown"),
        (None, "unknown"),
        ("", "unknown"),
        ("mit, cc-by-nc-4.0", "non-commercial"),
        ("apache-2.0 OR gpl-2.0", "copyleft"),
    ],
)
def test_classify(license_id: str | None, cls: str) -> None:
    assert classify_license(license_id) == cls


def test_card_front_matter() -> None:
    card = "---\nlanguage: en\nlicense: apache-2.0\ntags:\n- x\n---\n# Model\nlicense: mit (in the body)\n"
    assert license_from_card(card) == "apache-2.0"


def test_card_other_uses_license_name() -> None:
    assert license_from_card("---\nlicense: other\nlicense_name: tongyi-qianwen\n---\n") == "tongyi-qianwen"


def test_card_without_front_matter() -> None:
    assert license_from_card("# Model\nlicense: mit\n") is None


def test_card_with_broken_yaml_falls_back_to_line_match() -> None:
    assert license_from_card("---\nlicense: mit\ntags: [unclosed\n---\n") == "mit"


def test_read_license_prefers_card_then_config(tmp_path: Path) -> None:
    assert read_license(tmp_path) is None
    (tmp_path / "config.json").write_text(json.dumps({"license": "gpl-3.0"}))
    assert read_license(tmp_path) == "gpl-3.0"
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    assert read_license(tmp_path) == "mit"
