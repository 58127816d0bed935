"""Open a bundle only after every file matches the hash its manifest records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from kiln.bundle.hashing import sha256_file
from kiln.bundle.manifest import MANIFEST_NAME, SCHEMA_VERSION, Manifest
from kiln.errors import BundleError
from kiln.runtime.onnx_backend import OnnxBackend


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    @property
    def artifact_path(self) -> Path:
        return self.root / self.manifest.artifact

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.manifest.tokenizer

    def backend(self, threads: int = 0, spinning: bool = True) -> OnnxBackend:
        """The artifact in an ONNX Runtime session with the settings the build measured it with."""
        return OnnxBackend(self.artifact_path, threads, self.manifest.runtime, spinning)


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise BundleError(f"bundle manifest names a file outside the bundle: {rel!r}")
    return path


def read_manifest(root: Path) -> Manifest:
    root = Path(root)
    if not root.exists():
        raise BundleError(f"no bundle at {root}: the path does not exist (build one with `kiln build`)")
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle directory (a bundle is the folder `kiln build` writes)")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{root} has no {MANIFEST_NAME}: not a kiln bundle, or an incomplete one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); rebuild the bundle") from exc
    if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema version {data['schema_version']}; this kiln reads up to {SCHEMA_VERSION}: "
            "upgrade kiln"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path} is not a valid kiln manifest: {exc}") from exc


def load_bundle(root: Path, verify: bool = True) -> Bundle:
    """Read and (by default) verify a bundle: every file listed must exist with its recorded sha256."""
    root = Path(root)
    manifest = read_manifest(root)
    for required in (manifest.artifact, manifest.tokenizer):
        if required not in manifest.files:
            raise BundleError(f"bundle manifest does not list a hash for {required!r}: refusing to load it")
    if verify:
        problems: list[str] = []
        for rel, expected in sorted(manifest.files.items()):
            path = _inside(root, rel)
            if not path.is_file():
                problems.append(f"missing: {rel}")
            elif sha256_file(path) != expected:
                problems.append(f"modified: {rel} (sha256 differs from the manifest)")
        if problems:
            raise BundleError(
                f"bundle {root} failed verification; it is incomplete or was changed after it was built:\n  "
                + "\n  ".join(problems)
                + "\nRebuild it with `kiln build`."
            )
    return Bundle(root=root, manifest=manifest)
