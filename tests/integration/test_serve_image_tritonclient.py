"""An image-classify bundle behind real sockets (uvicorn + gRPC on one loop, in a thread of this process),
called with the clients Triton users have: ``tritonclient.http`` (binary data) and ``tritonclient.grpc``
send JPEG bytes, and the labels and scores equal what the bundle's own ONNX model and preprocessing give
in process. A preprocessed FP32 tensor sent instead gives the same scores."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image

from _fixtures import image_bundle as _image_fixtures
from _fixtures.image_bundle import TINY_IMAGE_MODEL, TINY_LABELS, TINY_SIDE
from _fixtures.server_process import free_port
from kiln.bench.quality_classify import softmax
from kiln.bundle.load import load_bundle
from kiln.runtime.image_preprocess import ImagePreprocessor, read_image
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.serve.app import create_app
from kiln.serve.server import Servers
from kiln.settings import Settings
from kiln.tasks.image_classify_config import ImageClassifyConfig

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

pytestmark = pytest.mark.timeout(120)
tiny_image_bundle = _image_fixtures.tiny_image_bundle  # a session fixture, registered here

MODEL = TINY_IMAGE_MODEL
COLORS = [(255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)]


def jpeg(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    arr = np.zeros((size[1], size[0], 3), np.uint8) + np.array(color, np.uint8)
    arr[::4] = 255 - arr[::4]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


JPEGS = [jpeg(c, (48 + 8 * i, 40)) for i, c in enumerate(COLORS)]


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int


@pytest.fixture(scope="module")
def ports(tiny_image_bundle: Path) -> Iterator[Ports]:
    """``kiln serve``'s two servers (``Servers``: uvicorn, gRPC beside it) on free ports, in a thread."""
    settings = Settings(threads=1, access_log=False)
    app = create_app(load_bundle(tiny_image_bundle), settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")
    server = Servers(config, app.state.dataplane, grpc_port=0, max_message_bytes=settings.max_request_bytes)
    thread = threading.Thread(target=server.run, name="kiln-test-servers", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the servers did not start"
        time.sleep(0.05)
    assert server.grpc_bound is not None
    try:
        yield Ports(config.port, server.grpc_bound)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def config(tiny_image_bundle: Path) -> ImageClassifyConfig:
    return ImageClassifyConfig.model_validate(load_bundle(tiny_image_bundle).manifest.task_config)


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    folder = tmp_path_factory.mktemp("jpegs")
    out = []
    for i, data in enumerate(JPEGS):
        (folder / f"{i}.jpg").write_bytes(data)
        out.append(read_image(folder / f"{i}.jpg"))
    return out


@pytest.fixture(scope="module")
def expected(tiny_image_bundle: Path, config: ImageClassifyConfig, decoded: list[np.ndarray]) -> np.ndarray:
    """The bundle's ONNX model on the bundle's preprocessing of the decoded JPEGs, in process."""
    pre = ImagePreprocessor(config.preprocess, input_name=config.input_name)
    logits = OnnxBackend(tiny_image_bundle / "model.onnx").run(pre.encode_arrays(decoded))[0]
    return softmax(logits).astype(np.float32)


def labels_of(scores: np.ndarray) -> list[str]:
    return [TINY_LABELS[int(k)] for k in scores.argmax(axis=1)]


def test_tritonclient_http_binary_jpeg_round_trip(ports: Ports, expected: np.ndarray) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{ports.http}")
    try:
        meta = client.get_model_metadata(MODEL)
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("image", "BYTES"), ("input", "FP32")]
        image = httpclient.InferInput("image", [len(JPEGS)], "BYTES")
        image.set_data_from_numpy(np.array(JPEGS, dtype=np.object_), binary_data=True)
        outputs = [
            httpclient.InferRequestedOutput("label", binary_data=True),
            httpclient.InferRequestedOutput("scores", binary_data=True),
        ]
        result = client.infer(MODEL, [image], outputs=outputs, request_id="http-jpeg")
        labels = [b.decode() for b in result.as_numpy("label").tolist()]
        assert labels == labels_of(expected)
        np.testing.assert_allclose(result.as_numpy("scores"), expected, atol=1e-6)
        only = client.infer(
            MODEL, [image], outputs=[httpclient.InferRequestedOutput("label", binary_data=False)]
        )
        assert only.as_numpy("scores") is None
        assert [str(x if isinstance(x, str) else x.decode()) for x in only.as_numpy("label")] == labels
    finally:
        client.close()


def test_tritonclient_grpc_jpeg_round_trip_and_the_tensor_path(
    ports: Ports, expected: np.ndarray, config: ImageClassifyConfig, decoded: list[np.ndarray]
) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports.grpc}")
    try:
        meta = client.get_model_metadata(MODEL, as_json=True)
        assert meta["inputs"][1] == {
            "name": "input",
            "datatype": "FP32",
            "shape": ["-1", "3", str(TINY_SIDE), str(TINY_SIDE)],
        }
        image = grpcclient.InferInput("image", [len(JPEGS)], "BYTES")
        image.set_data_from_numpy(np.array(JPEGS, dtype=np.object_))
        outputs = [grpcclient.InferRequestedOutput("label"), grpcclient.InferRequestedOutput("scores")]
        result = client.infer(MODEL, [image], outputs=outputs)
        by_files = result.as_numpy("scores")
        assert [b.decode() for b in result.as_numpy("label").tolist()] == labels_of(expected)
        np.testing.assert_allclose(by_files, expected, atol=1e-6)

        pre = ImagePreprocessor(config.preprocess, input_name=config.input_name)
        x = pre.encode_arrays(decoded)[config.input_name]
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        by_tensor = client.infer(MODEL, [tensor], outputs=[grpcclient.InferRequestedOutput("scores")])
        np.testing.assert_allclose(by_tensor.as_numpy("scores"), by_files, atol=1e-6)
        assert by_tensor.as_numpy("label") is None

        with pytest.raises(grpcclient.InferenceServerException) as err:
            bad = grpcclient.InferInput("image", [1], "BYTES")
            bad.set_data_from_numpy(np.array([JPEGS[0][:200]], dtype=np.object_))
            client.infer(MODEL, [bad])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "truncated" in err.value.message()
        assert client.is_server_ready()
    finally:
        client.close()
