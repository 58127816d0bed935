"""The model repository: bundles on disk by model name and version; load, hot swap, canary, unload.

What ``kiln serve PATH [PATH ...]`` accepts (each PATH is one of):

* a bundle folder (it holds ``kiln.json``): one model, named by its manifest's ``model_name``, version 1;
* a versioned model folder (``name/1/``, ``name/2/``, ...: numbered subfolders that are bundles): one
  model named after the folder, one version per numbered subfolder;
* a repository folder: every subfolder is a bundle folder or a versioned model folder, and the model is
  named after its subfolder (the manifest's ``model_name`` becomes an alias). Hidden subfolders and
  subfolders that are neither are skipped.

Version policy: a model serves its latest version (the highest number). With a canary
(``--canary NAME=VERSION:PERCENT``), it serves the canary version and the highest other version, and
PERCENT % of the requests that name no version go to the canary; a request that names a version gets it.

``load(name)`` (re)reads the model from disk: every version the policy wants is verified (sha256 of every
file), loaded and warmed *before* anything changes; then each is switched in atomically, and versions the
policy no longer wants are taken out of routing, their in-flight requests finish, and they are unloaded.
Zero requests fail during a swap; when loading fails (a tampered bundle, say), nothing changes and the old
versions keep serving. ``unload(name)`` takes every version out of routing, drains and unloads them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln.bundle.load import Bundle, load_bundle, read_manifest
from kiln.bundle.manifest import MANIFEST_NAME
from kiln.errors import BundleError, KilnError, UnknownModelError
from kiln.serve.dataplane import DEFAULT_VERSION, Canary, DataPlane, ModelInfo, ServedModel, version_key

log = logging.getLogger("kiln.serve")

Loader = Callable[[Bundle], tuple[ModelInfo, ServedModel]]
"""Opens a verified bundle and warms it: its info (name, aliases: the bundle's own) and its model."""

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class CanarySpec:
    """``NAME=VERSION:PERCENT``: PERCENT % of NAME's unversioned requests go to VERSION."""

    name: str
    version: str
    percent: float

    @property
    def canary(self) -> Canary:
        return Canary(self.version, self.percent / 100)


def parse_canary(spec: str) -> CanarySpec:
    """``"name=2:10"`` -> ``CanarySpec("name", "2", 10.0)``; ``ValueError`` saying what is wrong."""
    name, eq, rest = spec.partition("=")
    version, colon, percent = rest.partition(":")
    if not (eq and colon and name and version and percent):
        raise ValueError(f"canary {spec!r} is not NAME=VERSION:PERCENT (e.g. embedder=2:10)")
    try:
        value = float(percent)
    except ValueError:
        raise ValueError(f"canary {spec!r}: PERCENT {percent!r} is not a number") from None
    if not 0 < value < 100:
        raise ValueError(f"canary {spec!r}: PERCENT must be between 0 and 100 (exclusive), not {percent}")
    return CanarySpec(name, version, value)


def _is_bundle(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def _version_dirs(path: Path) -> dict[str, Path]:
    if not path.is_dir():
        return {}
    return {p.name: p for p in path.iterdir() if p.name.isdigit() and p.is_dir() and _is_bundle(p)}


@dataclass(frozen=True)
class Source:
    """Where one model's versions live on disk."""

    name: str
    root: Path
    versioned: bool
    """True: numbered subfolders of ``root`` are the versions; False: ``root`` is the bundle (version 1)."""
    named_by_manifest: bool = False
    """True: a bundle folder given directly, served under its manifest's name with its own aliases."""

    def versions(self) -> dict[str, Path]:
        """Version -> bundle folder, as the disk holds them now (a version folder counts once it has a
        manifest: write ``kiln.json`` last when copying one in)."""
        if self.versioned:
            return _version_dirs(self.root)
        return {DEFAULT_VERSION: self.root} if _is_bundle(self.root) else {}


def find_sources(paths: Iterable[Path], manifests: dict[Path, str] | None = None) -> dict[str, Source]:
    """The models under ``paths`` (see the module doc) by name; ``BundleError`` for a path that holds
    none, or two models with one name. ``manifests``: model names already known, by resolved folder."""
    known = manifests or {}
    found: dict[str, Source] = {}

    def put(source: Source, where: Path) -> None:
        other = found.get(source.name)
        if other is not None and other.root.resolve() != source.root.resolve():
            raise BundleError(
                f"two models are named {source.name!r}: {other.root} and {where}; rename one folder "
                "(or rebuild one bundle under another model name)"
            )
        found[source.name] = source

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise BundleError(f"no bundle at {path}: the path does not exist (build one with `kiln build`)")
        if not path.is_dir():
            raise BundleError(
                f"{path} is not a bundle directory (a bundle is the folder `kiln build` writes)"
            )
        if _is_bundle(path):
            name = known.get(path.resolve()) or read_manifest(path).model_name
            put(Source(name, path, versioned=False, named_by_manifest=True), path)
        elif _version_dirs(path):
            put(Source(path.name, path, versioned=True), path)
        else:
            children = [c for c in sorted(path.iterdir()) if c.is_dir() and not c.name.startswith(".")]
            models = 0
            for child in children:
                if _is_bundle(child):
                    put(Source(child.name, child, versioned=False), child)
                elif _version_dirs(child):
                    put(Source(child.name, child, versioned=True), child)
                else:
                    continue
                models += 1
            if models == 0:
                raise BundleError(
                    f"{path} holds no bundle: pass a bundle folder (it holds {MANIFEST_NAME}), a model "
                    "folder with numbered version subfolders (name/1/, name/2/), or a folder of those"
                )
    return found


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index (Triton's shape)."""

    name: str
    version: str
    state: str
    reason: str = ""


class ModelRepository:
    """Loads the models found under ``paths`` into ``dataplane`` and swaps, splits and unloads them.

    ``load``/``unload``/``load_all`` block (verification, ONNX Runtime sessions, draining): call them off
    the event loop. They run one at a time.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        dataplane: DataPlane,
        loader: Loader,
        canaries: Iterable[CanarySpec] = (),
        verified: Iterable[Bundle] = (),
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.dataplane = dataplane
        self._loader = loader
        self._canaries = {c.name: c for c in canaries}
        self._verified = {b.root.resolve(): b for b in verified}  # used once, instead of verifying again
        self._failures: dict[str, str] = {}
        self._lock = threading.Lock()
        names = {root: b.manifest.model_name for root, b in self._verified.items()}
        self._sources = find_sources(self.paths, names)
        unknown = sorted(set(self._canaries) - set(self._sources))
        if unknown:
            raise BundleError(
                f"--canary names {', '.join(map(repr, unknown))}, which is not served; models: "
                + ", ".join(map(repr, self._sources))
            )

    # -- what is on disk ----------------------------------------------------------------------------
    def sources(self) -> dict[str, Source]:
        """The models on disk now (the folders are read again: new models and versions show up)."""
        names = {s.root.resolve(): s.name for s in self._sources.values() if s.named_by_manifest}
        try:
            self._sources = find_sources(self.paths, names)
        except KilnError as exc:  # a folder changed under us: keep what we knew, say why
            log.warning("the model repository could not be read again: %s", exc)
        return self._sources

    def wanted(self, source: Source, on_disk: dict[str, Path]) -> list[str]:
        """The versions the policy serves: the latest, or the canary and the highest other version."""
        order = sorted(on_disk, key=version_key)
        if not order:
            raise BundleError(f"model {source.name!r} has no version on disk under {source.root}")
        spec = self._canaries.get(source.name)
        if spec is None:
            return [order[-1]]
        if spec.version not in on_disk:
            raise BundleError(
                f"the canary for model {source.name!r} is version {spec.version}, which is not on disk "
                f"under {source.root} (versions there: {', '.join(order)})"
            )
        stable = [v for v in order if v != spec.version]
        return [*stable[-1:], spec.version]

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every version on disk and every version loaded, with its state."""
        loaded = self.dataplane.loaded_versions()
        rows: list[IndexEntry] = []
        for name, source in sorted(self.sources().items()):
            served = loaded.get(name, [])
            on_disk = source.versions()
            for version in sorted(set(on_disk) | set(served), key=version_key):
                if version in served:
                    rows.append(IndexEntry(name, version, READY))
                elif name in self._failures:
                    rows.append(IndexEntry(name, version, UNAVAILABLE, self._failures[name]))
                elif served:
                    rows.append(IndexEntry(name, version, UNAVAILABLE, "not served by the version policy"))
                else:
                    rows.append(IndexEntry(name, version, UNAVAILABLE, "unloaded"))
        for name, versions in sorted(loaded.items()):
            if name not in self._sources:
                rows.extend(IndexEntry(name, v, READY) for v in versions)
        return [r for r in rows if r.state == READY] if ready_only else rows

    # -- load / unload ------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every model found (at startup); the first failure stops the server from starting."""
        for name in list(self._sources):
            self.load(name)

    def load(self, name: str) -> list[str]:
        """(Re)load model ``name`` from disk with zero failed requests (see the module doc); the versions
        now served. Raises ``UnknownModelError`` when the repository has no such model, and the loader's
        ``KilnError`` (the old versions keep serving) when a version cannot be loaded."""
        with self._lock:
            source = self._source(name)
            try:
                on_disk = source.versions()
                versions = self.wanted(source, on_disk)
                loaded = [self._open(source, v, on_disk[v]) for v in versions]  # all or nothing
            except KilnError as exc:
                self._failures[source.name] = f"load failed: {exc}"
                raise
            self._failures.pop(source.name, None)
            retired = []
            for info, model in loaded:
                old = self.dataplane.install(info, model)
                if old is not None:
                    retired.append(old)
            spec = self._canaries.get(source.name)
            self.dataplane.set_canary(source.name, spec.canary if spec else None)
            stale = [v for v in self.dataplane.loaded_versions()[source.name] if v not in versions]
            retired.extend(self.dataplane.remove(source.name, stale))
            for r in retired:
                r.drain()
            log.info("model %r: serving version(s) %s", source.name, ", ".join(versions))
            return versions

    def unload(self, name: str) -> None:
        """Stop serving model ``name``: no new request reaches it, those in flight finish, then it is
        unloaded. Unloading a model that is on disk but not loaded does nothing."""
        with self._lock:
            if self._names_loaded(name):
                retired = self.dataplane.remove(name)
                for r in retired:
                    r.drain()
                log.info("model %r unloaded", retired[0].name if retired else name)
                return
            self._source(name)  # unknown anywhere: UnknownModelError

    def _names_loaded(self, name: str) -> bool:
        try:
            self.dataplane.resolve(name)
        except UnknownModelError:
            return False
        return True

    def _source(self, name: str) -> Source:
        sources = self.sources()
        source = sources.get(name)
        if source is None:
            try:  # an alias of a loaded model
                source = sources.get(self.dataplane.resolve(name).name)
            except UnknownModelError:
                source = None
        if source is None:
            listed = ", ".join(repr(n) for n in sources) or "none"
            raise UnknownModelError(
                f"the model repository has no model {name!r}; models: {listed} "
                f"(repository paths: {', '.join(str(p) for p in self.paths)})"
            )
        return source

    def _open(self, source: Source, version: str, path: Path) -> tuple[ModelInfo, ServedModel]:
        """Verify, load and warm one version; its info carries the repository's name and the version."""
        bundle = self._verified.pop(path.resolve(), None) or load_bundle(path)
        info, model = self._loader(bundle)
        aliases = set(info.aliases)
        if not source.named_by_manifest:
            aliases = {a for a in aliases if a != path.resolve().name} | {bundle.manifest.model_name}
        aliases = {a for a in aliases if a and not a.isdigit()} - {source.name}
        info = dataclasses.replace(info, name=source.name, version=version, aliases=frozenset(aliases))
        return info, model
