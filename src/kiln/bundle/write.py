"""Write a bundle directory: copy the files, hash them, write ``kiln.json`` last."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from kiln.bundle.hashing import sha256_file
from kiln.bundle.manifest import MANIFEST_NAME, Manifest
from kiln.errors import BundleError


def write_bundle(
    out: Path, manifest: Manifest, files: Mapping[str, Path], texts: Mapping[str, str] | None = None
) -> Path:
    """Create ``out`` with ``files`` (bundle-relative name -> source path) and ``texts`` (name -> content).

    The manifest's ``files`` map is filled with the sha256 of everything written; ``kiln.json`` goes in
    last, so a directory without it is never mistaken for a finished bundle.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise BundleError(f"{out} exists, is not empty and is not a kiln bundle: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    stale = out / MANIFEST_NAME
    if stale.exists():
        stale.unlink()
    hashes: dict[str, str] = {}
    for rel, src in files.items():
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        hashes[rel] = sha256_file(dst)
    for rel, content in (texts or {}).items():
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(content, encoding="utf-8")
        hashes[rel] = sha256_file(dst)
    final = manifest.model_copy(update={"files": dict(sorted(hashes.items()))})
    tmp = out / (MANIFEST_NAME + ".tmp")
    tmp.write_text(final.model_dump_json(indent=2), encoding="utf-8")
    tmp.replace(out / MANIFEST_NAME)
    return out
