"""Serving never imports torch or transformers (checked in a clean interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, sys
from pathlib import Path
from starlette.testclient import TestClient
from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
import kiln.serve.server
from kiln.settings import Settings
with TestClient(create_app(load_bundle(Path(sys.argv[1])), Settings())) as client:
    ok = client.post("/v1/embeddings", json={"model": "tiny-embed", "input": "hello"}).status_code
    ok2 = client.post("/v2/models/tiny-embed/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}).status_code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "onnx", "sklearn"})
print(json.dumps({"status": [ok, ok2], "heavy": heavy}))
"""


def test_serving_imports_no_torch(tiny_bundle: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == [200, 200]
    assert result["heavy"] == []
