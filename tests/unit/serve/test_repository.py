"""The model repository over real (tiny) bundle folders and a fake loader: layouts, policy, load, unload."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from _fixtures.tiny_bundle import TinyBundleFactory
from kiln.bundle.load import Bundle
from kiln.errors import BundleError, UnknownModelError
from kiln.serve.dataplane import DataPlane, ModelInfo, TensorSpec
from kiln.serve.models import aliases
from kiln.serve.repository import READY, UNAVAILABLE, CanarySpec, ModelRepository, find_sources, parse_canary


class Seeded:
    """Rows of the bundle's seed: the answer tells which bundle computed it."""

    def __init__(self, seed: float) -> None:
        self.seed = seed

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.full((len(texts), 2), self.seed, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [1 for _ in texts]


def fake_loader(bundle: Bundle) -> tuple[ModelInfo, Seeded]:
    info = ModelInfo(
        name=bundle.manifest.model_name,
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, 2)),),
        aliases=aliases(bundle),  # what load_embed_model gives: the folder's name, a hub id
    )
    return info, Seeded(float(len(bundle.manifest.source.spec)))


@pytest.fixture(scope="module")
def bundles(tiny_bundle_factory: TinyBundleFactory) -> dict[str, Path]:
    return {
        "a": tiny_bundle_factory("a", model_name="model-a"),
        "b": tiny_bundle_factory("b", model_name="model-b", source_kind="hub", source_spec="org/model-b"),
    }


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def answer(dp: DataPlane, name: str, version: str | None = None) -> float:
    return float(dp.infer(name, ["x"], version=version)[0, 0])


def test_parse_canary() -> None:
    assert parse_canary("embed=2:10") == CanarySpec("embed", "2", 10.0)
    assert parse_canary("m=3:2.5").canary.weight == pytest.approx(0.025)
    for bad, match in [
        ("embed", "NAME=VERSION:PERCENT"),
        ("embed=2", "NAME=VERSION:PERCENT"),
        ("=2:10", "NAME=VERSION:PERCENT"),
        ("e=2:ten", "not a number"),
        ("e=2:100", "between 0 and 100"),
        ("e=2:0", "between 0 and 100"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_canary(bad)


def test_find_sources_reads_every_layout(bundles: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    copy(bundles["a"], repo / "plain")
    copy(bundles["a"], repo / "versioned" / "1")
    copy(bundles["b"], repo / "versioned" / "2")
    (repo / "versioned" / "notes").mkdir()
    (repo / ".hidden").mkdir()
    (repo / "empty").mkdir()
    standalone = copy(bundles["b"], tmp_path / "standalone")
    models = copy(bundles["a"], tmp_path / "models" / "7")
    found = find_sources([repo, standalone, models.parent])
    assert sorted(found) == ["model-b", "models", "plain", "versioned"]
    assert found["model-b"].named_by_manifest and found["model-b"].versions() == {"1": standalone}
    assert found["versioned"].versions() == {"1": repo / "versioned" / "1", "2": repo / "versioned" / "2"}
    assert found["models"].versions() == {"7": models}
    assert found["plain"].versions() == {"1": repo / "plain"}


def test_find_sources_errors(bundles: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        find_sources([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="holds no bundle"):
        find_sources([tmp_path / "empty"])
    one = copy(bundles["a"], tmp_path / "one")
    two = copy(bundles["a"], tmp_path / "two")
    with pytest.raises(BundleError, match="two models are named 'model-a'"):
        find_sources([one, two])


def test_latest_version_is_served_and_load_swaps(bundles: dict[str, Path], tmp_path: Path) -> None:
    root = copy(bundles["a"], tmp_path / "embed" / "1")
    dp = DataPlane()
    repo = ModelRepository([root.parent], dp, fake_loader)
    repo.load_all()
    v1 = answer(dp, "embed")
    assert dp.loaded_versions() == {"embed": ["1"]}
    assert dp.resolve("model-a").name == "embed"  # the manifest's name is an alias; "1" is not
    copy(bundles["b"], tmp_path / "embed" / "2")
    assert [(r.version, r.state) for r in repo.index()] == [("1", READY), ("2", UNAVAILABLE)]
    assert repo.load("embed") == ["2"]
    assert dp.loaded_versions() == {"embed": ["2"]} and answer(dp, "embed") != v1
    assert [(r.version, r.state, r.reason) for r in repo.index()] == [
        ("1", UNAVAILABLE, "not served by the version policy"),
        ("2", READY, ""),
    ]
    assert [r.version for r in repo.index(ready_only=True)] == ["2"]


def test_canary_policy_serves_two_versions(bundles: dict[str, Path], tmp_path: Path) -> None:
    for v in ("1", "2"):
        copy(bundles["a"], tmp_path / "embed" / v)
    copy(bundles["b"], tmp_path / "embed" / "3")
    dp = DataPlane()
    repo = ModelRepository([tmp_path / "embed"], dp, fake_loader, canaries=[parse_canary("embed=3:25")])
    repo.load_all()
    assert dp.loaded_versions() == {"embed": ["2", "3"]}
    assert dp.resolve("embed").version == "2"  # the stable version
    with pytest.raises(BundleError, match="not served"):
        ModelRepository([tmp_path / "embed"], DataPlane(), fake_loader, canaries=[parse_canary("x=1:5")])
    missing = ModelRepository([tmp_path / "embed"], DataPlane(), fake_loader, [parse_canary("embed=9:5")])
    with pytest.raises(BundleError, match="canary for model 'embed' is version 9, which is not on disk"):
        missing.load_all()


def test_a_tampered_version_changes_nothing(bundles: dict[str, Path], tmp_path: Path) -> None:
    copy(bundles["a"], tmp_path / "embed" / "1")
    dp = DataPlane()
    repo = ModelRepository([tmp_path], dp, fake_loader)
    repo.load_all()
    before = answer(dp, "embed")
    bad = copy(bundles["b"], tmp_path / "embed" / "2")
    (bad / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match="failed verification"):
        repo.load("embed")
    assert dp.loaded_versions() == {"embed": ["1"]} and answer(dp, "embed") == before
    assert repo.index()[1].reason.startswith("load failed: bundle")


def test_unload_and_load_again(bundles: dict[str, Path], tmp_path: Path) -> None:
    bundle = copy(bundles["b"], tmp_path / "b")
    dp = DataPlane()
    repo = ModelRepository([bundle], dp, fake_loader)
    repo.load_all()
    assert dp.resolve("org/model-b").name == "model-b"  # a bundle given directly keeps its aliases
    repo.unload("org/model-b")
    assert repo.index()[0].state == UNAVAILABLE and repo.index()[0].reason == "unloaded"
    with pytest.raises(UnknownModelError, match="is unloaded"):
        dp.infer("model-b", ["x"])
    repo.unload("model-b")  # on disk, not loaded: nothing to do
    with pytest.raises(UnknownModelError, match="has no model 'nope'"):
        repo.unload("nope")
    with pytest.raises(UnknownModelError, match="has no model 'nope'"):
        repo.load("nope")
    assert repo.load("model-b") == ["1"] and dp.model_names == ["model-b"]
