"""One real bundle of the default model (all-MiniLM-L6-v2), built once per test run.

Built with a smaller evaluation sample and shorter latency runs than ``kiln build``'s defaults so the
suite fits CI's budget on 2 cores; everything else (export, quantization, parity gate, held-out probe,
memory probe, bundle writing) is the real pipeline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from rich.console import Console

    from kiln.optimize.build import BuildOptions, build
    from kiln.optimize.structural import QUICK

    prebuilt = os.environ.get("KILN_TEST_BUNDLE")
    if prebuilt:
        yield Path(prebuilt)
        return
    out = tmp_path_factory.mktemp("bundles") / "all-MiniLM-L6-v2"
    opts = BuildOptions(out=out, eval_samples=1200, latency_seconds=0.5, techniques=QUICK)  # as `kiln run`
    build(opts, console=Console(width=160, force_terminal=False))
    yield out
