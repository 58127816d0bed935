"""License ids from model cards and config.json, and their classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.analyze.license import (
    classify_license,
    license_from_card,
    license_verdict,
    license_warning,
    read_license,
    verdict_for_license,
)


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


# --- commercial-use verdicts ------------------------------------------------------------------------------

DATA = Path(__file__).resolve().parents[2] / "data" / "licenses"
CARDS = json.loads((DATA / "cards.json").read_text())


def test_the_table_is_big_enough() -> None:
    assert len(CARDS) >= 20


@pytest.mark.parametrize("case", CARDS, ids=[c["name"] for c in CARDS])
def test_card_verdicts(case: dict[str, object]) -> None:
    v = license_verdict(str(case["card"]))
    assert v.verdict == case["verdict"]
    assert v.condition_keys == case["conditions"]
    assert all(c.split(": ", 1)[1] for c in v.conditions)  # every condition says what it asks


@pytest.mark.parametrize("text", sorted(p.name for p in (DATA / "LICENSE-texts").iterdir()))
def test_license_files_are_told_by_their_text(tmp_path: Path, text: str) -> None:
    (tmp_path / "LICENSE").write_text((DATA / "LICENSE-texts" / text).read_text())
    v = license_verdict(tmp_path)
    assert (v.license, v.source) == (text.removesuffix(".txt"), "LICENSE")


def test_folder_prefers_the_card_then_license_file_then_config(tmp_path: Path) -> None:
    assert license_verdict(tmp_path).verdict == "unknown"
    (tmp_path / "config.json").write_text(json.dumps({"license": "gpl-3.0"}))
    assert (license_verdict(tmp_path).license, license_verdict(tmp_path).source) == ("gpl-3.0", "config.json")
    (tmp_path / "LICENSE").write_text((DATA / "LICENSE-texts" / "mit.txt").read_text())
    assert license_verdict(tmp_path).license == "mit"
    (tmp_path / "README.md").write_text("---\nlicense: llama3.1\n---\n")
    v = license_verdict(str(tmp_path))
    assert (v.license, v.source, v.verdict) == ("llama3.1", "README.md: license", "conditional")
    # "other" with a name kiln does not know falls back to the LICENSE file, keeping the link
    (tmp_path / "README.md").write_text(
        "---\nlicense: other\nlicense_name: acme\nlicense_link: https://x\n---\n"
    )
    v = license_verdict(tmp_path)
    assert (v.license, v.source, v.link) == ("mit", "LICENSE", "https://x")


def test_lineage_is_recorded() -> None:
    v = license_verdict("---\nlicense: apache-2.0\nbase_model: meta-llama/Llama-2-7b-hf\n---\n")
    assert v.base_models == ["meta-llama/Llama-2-7b-hf"]
    assert "mau-limit" in v.condition_keys and v.verdict == "conditional"


def test_warning_only_when_not_clearly_allowed() -> None:
    assert license_warning(verdict_for_license("mit")) is None
    warning = license_warning(verdict_for_license("llama3.1", source="README.md: license"))
    assert warning is not None and "only on conditions" in warning and "mau-limit" in warning
    assert "does not allow commercial use" in (license_warning(verdict_for_license("cc-by-nc-4.0")) or "")
    assert "could not be classified" in (license_warning(verdict_for_license(None)) or "")
