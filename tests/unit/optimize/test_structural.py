"""Which structural candidates a build tries, on what text, and how ``--techniques`` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.errors import DataError
from kiln.optimize.cpu import parse_cpuinfo
from kiln.optimize.structural import (
    QUICK,
    TECHNIQUES,
    parse_techniques,
    read_unlabelled,
    structural_candidates,
    training_texts,
)

CPU = parse_cpuinfo("model name : AMD EPYC\nflags : avx2\n", cores=2)


def test_parse_techniques() -> None:
    assert parse_techniques("all") == TECHNIQUES
    assert parse_techniques("quick") == QUICK
    assert parse_techniques("distill, quantize") == ("quantize", "distill")  # canonical order
    with pytest.raises(DataError, match="unknown \\['pruning'\\]"):
        parse_techniques("quantize,pruning")
    with pytest.raises(DataError, match="nothing given"):
        parse_techniques(" , ")


def test_candidates_follow_expected_gain_and_the_task() -> None:
    found = structural_candidates("classify", 6, CPU, TECHNIQUES, train_seconds=100.0)
    assert [c.name for c in found] == ["distill-L3", "prune-30", "lowrank-0.9"]
    distill = found[0].steps[0]
    assert distill.num_layers == 3  # type: ignore[attr-defined]
    assert distill.loss.kind == "kl" and distill.budget.max_seconds == 100.0  # type: ignore[attr-defined]
    assert [name for name, _, _ in found[0].children] == ["distill-L3-int8-dynamic", "distill-L3-int8-static"]
    fused = structural_candidates("classify", 6, CPU, TECHNIQUES, shape=(12, 384))[0].children
    assert [(name, via) for name, _, via in fused] == [
        ("distill-L3-int8-dynamic", None),
        ("distill-L3-fused", None),
        ("distill-L3-fused-int8-emb4", "distill-L3-fused"),
        ("distill-L3-int8-static", None),
    ]
    assert fused[1][1].kind == "fuse-transformer" and fused[2][1].embeddings == "int4"
    no_fuse = tuple(t for t in TECHNIQUES if t != "fuse")
    assert len(structural_candidates("classify", 6, CPU, no_fuse, shape=(12, 384))[0].children) == 2
    assert found[1].steps[0].recovery.max_seconds == 50.0  # type: ignore[attr-defined]
    embed = structural_candidates("embed", 6, CPU, ("distill",))
    assert [c.name for c in embed] == ["distill-L3"]
    assert embed[0].steps[0].loss.kind == "cosine"  # type: ignore[attr-defined]
    assert structural_candidates("embed", 0, CPU, ("distill",)) == []  # no layer stack: no student
    assert structural_candidates("embed", 6, CPU, QUICK) == []


def test_training_texts_never_hold_decision_texts() -> None:
    labelled = ["a", "b", "held", "c"]
    labels = np.array([0, 1, 1, 0])
    unlabelled = ["x", "a", "rank", "y", "x", "z"]
    texts, kept, extra = training_texts(labelled, labels, unlabelled, ["held", "rank"], seed=0)
    assert texts == ["a", "b", "c"] and kept is not None and kept.tolist() == [0, 1, 0]
    assert sorted(extra) == ["x", "y", "z"]  # duplicates, decision texts and labelled ones dropped
    _, _, cut = training_texts(labelled, None, unlabelled, [], seed=0, limit=5)
    assert len(cut) == 1  # 4 labelled + 1 unlabelled within the limit


def test_read_unlabelled_formats_and_errors(tmp_path: Path) -> None:
    txt = tmp_path / "u.txt"
    txt.write_text("one\n\n two \r\nthree\x85still three\n", encoding="utf-8")
    assert read_unlabelled(txt) == ["one", "two", "three\x85still three"]
    csv = tmp_path / "u.csv"
    csv.write_text("body\nhello\n", encoding="utf-8")
    assert read_unlabelled(csv, "body") == ["hello"]
    with pytest.raises(DataError, match="has no 'text' column"):
        read_unlabelled(csv)
    with pytest.raises(DataError, match="no such file"):
        read_unlabelled(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no text"):
        read_unlabelled(empty)
