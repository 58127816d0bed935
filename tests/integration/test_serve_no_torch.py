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


def _serve_in_a_fresh_process(script: str, bundle: Path) -> None:
    """Run ``script`` (two requests to ``bundle``) in a new interpreter; both answer 200 and no heavy
    module was imported."""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == [200, 200]
    assert result["heavy"] == []


def test_serving_imports_no_torch(tiny_bundle: Path) -> None:
    _serve_in_a_fresh_process(SCRIPT, tiny_bundle)


IMAGE_SCRIPT = """
import base64, io, json, sys
from pathlib import Path
from PIL import Image
from starlette.testclient import TestClient
from kiln.bundle.load import load_bundle
from kiln.serve.app import create_app
from kiln.settings import Settings
buf = io.BytesIO()
Image.new("RGB", (40, 30), (200, 30, 60)).save(buf, "JPEG")
with TestClient(create_app(load_bundle(Path(sys.argv[1])), Settings())) as client:
    ok = client.post("/v1/images/classify", files=[("file", ("a.jpg", buf.getvalue()))],
                     data={"model": "tiny-cnn"}).status_code
    ok2 = client.post("/v2/models/tiny-cnn/infer", json={"inputs": [{"name": "image", "datatype": "BYTES",
        "shape": [1], "data": [base64.b64encode(buf.getvalue()).decode()]}]}).status_code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "transformers", "onnx", "sklearn"})
print(json.dumps({"status": [ok, ok2], "heavy": heavy}))
"""


def test_serving_an_image_model_imports_no_torch(tmp_path: Path) -> None:
    from _fixtures.image_bundle import build_tiny_image_bundle

    _serve_in_a_fresh_process(IMAGE_SCRIPT, build_tiny_image_bundle(tmp_path / "tiny-cnn"))
