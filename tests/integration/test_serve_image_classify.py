"""An image-classify bundle served in process: v2 infer (image files or preprocessed tensors, JSON or binary),
``/v1/images/classify`` (multipart or JSON), every way a request can be wrong (each a clear 4xx, the server
unharmed), and the request log, metrics, access log and API keys for image models."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from _fixtures import image_bundle as _image_fixtures
from _fixtures.image_bundle import TINY_IMAGE_MODEL, TINY_LABELS, TINY_SIDE
from kiln.bench.quality_classify import softmax
from kiln.bundle.load import load_bundle
from kiln.runtime.image_preprocess import ImagePreprocessor, read_image
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.serve.app import build_app, create_app, create_repository_app
from kiln.serve.auth import Guard
from kiln.serve.batching import BatchConfig
from kiln.serve.dataplane import DataPlane, Limits
from kiln.serve.image_inputs import EncodedImages, ImageInputs, PreparedImages
from kiln.serve.keys import KeyStore, new_key
from kiln.serve.models import ImageClassifyModel, load_image_classify_model
from kiln.serve.v2_codec import HEADER_LENGTH, encode_bytes_tensor
from kiln.settings import Settings
from kiln.tasks.image_classify_config import ImageClassifyConfig

tiny_image_bundle = _image_fixtures.tiny_image_bundle  # a session fixture, registered here

MODEL = TINY_IMAGE_MODEL
INFER = f"/v2/models/{MODEL}/infer"
ROUTE = "/v1/images/classify"
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (255, 255, 0)]


def image_file(color: tuple[int, int, int], fmt: str = "JPEG", size: tuple[int, int] = (56, 40)) -> bytes:
    """A striped image (width x height ``size``) encoded as ``fmt``."""
    arr = np.zeros((size[1], size[0], 3), np.uint8) + np.array(color, np.uint8)
    arr[::4] = 255 - arr[::4]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


FILES = [image_file(c, "JPEG" if i % 2 else "PNG") for i, c in enumerate(COLORS)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def config(tiny_image_bundle: Path) -> ImageClassifyConfig:
    return ImageClassifyConfig.model_validate(load_bundle(tiny_image_bundle).manifest.task_config)


@pytest.fixture(scope="module")
def expected(
    tiny_image_bundle: Path, config: ImageClassifyConfig, tmp_path_factory: pytest.TempPathFactory
) -> np.ndarray:
    """What the bundle's own ONNX model and preprocessing give for ``FILES``, in process (no server)."""
    folder = tmp_path_factory.mktemp("images")
    pre = ImagePreprocessor(config.preprocess, input_name=config.input_name)
    arrays = []
    for i, data in enumerate(FILES):
        path = folder / f"{i}.img"
        path.write_bytes(data)
        arrays.append(read_image(path))
    backend = OnnxBackend(tiny_image_bundle / "model.onnx")
    return softmax(backend.run(pre.encode_arrays(arrays))[0]).astype(np.float32)


@pytest.fixture(scope="module")
def tensors(config: ImageClassifyConfig) -> np.ndarray:
    """``FILES`` preprocessed in process: the FP32 tensor a client would send instead of the files."""
    pre = ImagePreprocessor(config.preprocess, input_name=config.input_name)
    arrays = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in FILES]
    return pre.encode_arrays(arrays)[config.input_name]


@pytest.fixture(scope="module")
def client(tiny_image_bundle: Path) -> Iterator[TestClient]:
    settings = Settings(threads=1, max_batch_items=8, max_request_bytes=1 << 20)
    with TestClient(create_app(load_bundle(tiny_image_bundle), settings)) as c:
        yield c


def labels_of(scores: np.ndarray) -> list[str]:
    return [TINY_LABELS[int(k)] for k in np.asarray(scores).argmax(axis=1)]


def files_request(files: Sequence[bytes], **doc: Any) -> dict[str, Any]:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": [b64(f) for f in files]}
    return {"inputs": [tensor], **doc}


def binary_files_request(files: Sequence[bytes], **doc: Any) -> tuple[bytes, dict[str, str]]:
    raw = encode_bytes_tensor(list(files))
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(files)],
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor], **doc}).encode()
    return header + raw, {HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"}


def split_binary(r: Any) -> tuple[dict[str, Any], bytes]:
    n = int(r.headers[HEADER_LENGTH])
    return json.loads(r.content[:n]), r.content[n:]


def bytes_elements(raw: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        out.append(raw[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


# -- metadata and the happy paths ------------------------------------------------------------------------


def test_metadata_names_both_inputs_and_both_outputs(client: TestClient) -> None:
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "input", "datatype": "FP32", "shape": [-1, 3, TINY_SIDE, TINY_SIDE]},
    ]
    assert meta["outputs"] == [
        {"name": "scores", "datatype": "FP32", "shape": [-1, len(TINY_LABELS)]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    assert client.get(f"/v2/models/{MODEL}/ready").json()["ready"] is True


def test_v2_json_base64_files(client: TestClient, expected: np.ndarray) -> None:
    r = client.post(INFER, json=files_request(FILES, id="img-1"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "img-1" and doc["model_name"] == MODEL
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["label"] == {"name": "label", "datatype": "BYTES", "shape": [6], "data": labels_of(expected)}
    assert out["scores"]["shape"] == [6, len(TINY_LABELS)]
    np.testing.assert_allclose(np.asarray(out["scores"]["data"]).reshape(6, -1), expected, atol=1e-6)
    assert len(set(out["label"]["data"])) > 1  # the images are told apart


def test_v2_binary_files_and_requested_outputs(client: TestClient, expected: np.ndarray) -> None:
    body, headers = binary_files_request(
        FILES[:3], outputs=[{"name": "label", "parameters": {"binary_data": True}}]
    )
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    header, raw = split_binary(r)
    (out,) = header["outputs"]  # only the output asked for
    assert out["name"] == "label" and out["parameters"]["binary_data_size"] == len(raw)
    assert [b.decode() for b in bytes_elements(raw)] == labels_of(expected[:3])

    body, headers = binary_files_request(FILES[3:], parameters={"binary_data_output": True})
    header, raw = split_binary(client.post(INFER, content=body, headers=headers))
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert [o["name"] for o in header["outputs"]] == ["scores", "label"]
    scores = np.frombuffer(raw[: sizes[0]], dtype="<f4").reshape(3, -1)
    np.testing.assert_allclose(scores, expected[3:], atol=1e-6)


def test_the_json_content_type_parameter_and_a_data_url(client: TestClient, expected: np.ndarray) -> None:
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [1, 1],
        "parameters": {"content_type": "base64"},
        "data": [[f"data:image/png;base64,{b64(FILES[0])}"]],
    }
    r = client.post(INFER, json={"inputs": [tensor], "outputs": [{"name": "label"}]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == labels_of(expected[:1])


def test_the_preprocessed_tensor_gives_the_scores_of_the_files(
    client: TestClient, tensors: np.ndarray, expected: np.ndarray
) -> None:
    by_files = client.post(INFER, json=files_request(FILES)).json()["outputs"][0]["data"]
    flat = {
        "name": "input",
        "datatype": "FP32",
        "shape": list(tensors.shape),
        "data": tensors.ravel().tolist(),
    }
    as_json = client.post(INFER, json={"inputs": [flat], "outputs": [{"name": "scores"}]})
    assert as_json.status_code == 200, as_json.text
    nested = {**flat, "data": tensors.tolist()}
    as_nested = client.post(INFER, json={"inputs": [nested], "outputs": [{"name": "scores"}]})
    raw = tensors.astype("<f4").tobytes()
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": list(tensors.shape),
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor], "outputs": [{"name": "scores"}]}).encode()
    as_binary = client.post(INFER, content=header + raw, headers={HEADER_LENGTH: str(len(header))})
    assert as_binary.status_code == 200, as_binary.text
    for r in (as_json, as_nested, as_binary):
        got = np.asarray(r.json()["outputs"][0]["data"]).reshape(tensors.shape[0], -1)
        np.testing.assert_allclose(got, np.asarray(by_files).reshape(got.shape), atol=1e-6)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_v1_images_classify_multipart(client: TestClient, expected: np.ndarray) -> None:
    files = [("file", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(FILES[:4])]
    r = client.post(ROUTE, data={"model": MODEL}, files=files)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "list" and doc["model"] == MODEL and "usage" not in doc
    for i, item in enumerate(doc["data"]):
        assert item["object"] == "classification" and item["index"] == i
        assert item["label"] == labels_of(expected)[i]
        assert [s["label"] for s in item["scores"]] == [TINY_LABELS[k] for k in np.argsort(-expected[i])]
        assert item["score"] == pytest.approx(float(expected[i].max()), abs=1e-6)
    one = client.post(ROUTE, data={"model": MODEL, "top_k": "2"}, files=files[:1]).json()["data"]
    assert len(one) == 1 and len(one[0]["scores"]) == 2


def test_v1_images_classify_json(client: TestClient, expected: np.ndarray) -> None:
    r = client.post(ROUTE, json={"model": MODEL, "images": [b64(f) for f in FILES[:2]], "top_k": 1})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["label"] for d in data] == labels_of(expected[:2])
    assert all(len(d["scores"]) == 1 for d in data)
    single = client.post(ROUTE, json={"model": MODEL, "images": b64(FILES[2])}).json()["data"]
    assert single[0]["label"] == labels_of(expected[2:3])[0]
    assert len(single[0]["scores"]) == len(TINY_LABELS)  # the bundle's top_k (5), capped at the classes


# -- what is refused, and how -----------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels (its data holds far fewer)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    data = bytearray(image_file((10, 200, 30), "PNG", (64, 64)))
    start = data.index(b"IDAT") + 4
    data[start + 2 : start + 40] = bytes(38)  # zeroes in the deflate stream (the CRC no longer matches)
    return bytes(data)


BAD_FILES = [
    (b"", 400, "is empty"),
    (b"hello, I am a text file", 400, "is not an image file kiln decodes"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 400, "is not an image file kiln decodes"),
    (FILES[1][: len(FILES[1]) // 2], 400, "truncated"),
    (corrupt_png(), 400, "cannot be decoded"),
    (png_claiming(20_000, 20_000), 413, "decompression bomb"),
    (png_claiming(6_000, 5_000), 413, "30000000 pixels; the limit is 25000000"),
]


@pytest.mark.parametrize(("data", "status", "message"), BAD_FILES)
def test_bad_image_files_are_refused_in_every_form(
    client: TestClient, data: bytes, status: int, message: str
) -> None:
    r = client.post(INFER, json=files_request([data]))
    assert (r.status_code, message in r.json()["error"]) == (status, True), r.text
    body, headers = binary_files_request([FILES[0], data])
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == status and message.replace("image 0", "image 1") in r.json()["error"], r.text
    r = client.post(ROUTE, data={"model": MODEL}, files=[("file", ("x.jpg", data, "image/jpeg"))])
    error = r.json()["error"]
    assert (r.status_code, error["param"]) == (status, "file") and message in error["message"], r.text
    r = client.post(ROUTE, json={"model": MODEL, "images": [b64(data) or "="]})
    assert r.status_code in (status, 400) and r.json()["error"]["param"] == "images", r.text
    assert client.get("/v2/health/ready").status_code == 200  # nothing crashed


def test_a_pixel_limit_set_lower_refuses_ordinary_images(tiny_image_bundle: Path) -> None:
    settings = Settings(threads=1, max_image_pixels=1000)
    with TestClient(create_app(load_bundle(tiny_image_bundle), settings)) as c:
        r = c.post(INFER, json=files_request(FILES[:1]))
        assert r.status_code == 413
        assert "56x40 = 2240 pixels; the limit is 1000" in r.json()["error"]
        assert "KILN_MAX_IMAGE_PIXELS" in r.json()["error"]
        small = image_file((1, 2, 3), "PNG", (30, 30))
        assert c.post(INFER, json=files_request([small])).status_code == 200


def test_a_body_over_the_size_limit_is_413(client: TestClient) -> None:
    big = b"\xff" * (1 << 20)
    r = client.post(ROUTE, data={"model": MODEL}, files=[("file", ("big.jpg", big, "image/jpeg"))])
    assert r.status_code == 413 and "KILN_MAX_REQUEST_BYTES" in r.json()["error"]["message"]
    body, headers = binary_files_request([big])
    assert client.post(INFER, content=body, headers=headers).status_code == 413


def tensor_input(shape: list[int], data: Any, name: str = "input", datatype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


V2_BAD = [
    (files_request(FILES[:1], outputs=[{"name": "logits"}]), "unknown output 'logits'"),
    (
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]},
        "unknown input 'text'",
    ),
    ({"inputs": [files_request(FILES[:1])["inputs"][0]] * 2}, "takes one input per request"),
    (tensor_input([1], [b64(FILES[0])], name="image", datatype="FP32"), "it must be 'BYTES'"),
    (tensor_input([1, 3, TINY_SIDE, TINY_SIDE], [0.0], datatype="BYTES"), "it must be 'FP32'"),
    (
        tensor_input([2], [b64(FILES[0])], name="image", datatype="BYTES"),
        "holds 1 images, but its shape says 2",
    ),
    (tensor_input([1, 2], ["a", "b"], name="image", datatype="BYTES"), "takes [n] (or [n, 1]) image files"),
    (tensor_input([1], ["not base64!"], name="image", datatype="BYTES"), "is not base64"),
    (tensor_input([1], [3], name="image", datatype="BYTES"), "its data must be strings"),
    (tensor_input([1, 3, 16, 16], [0.0] * 768), "shape [n, 3, 32, 32]"),
    (tensor_input([1, 3, TINY_SIDE, TINY_SIDE], [0.0] * 10), "holds 10 numbers"),
    (tensor_input([1, 3, TINY_SIDE, TINY_SIDE], ["0"] * 3072), "must be numbers"),
    (tensor_input([0, 3, TINY_SIDE, TINY_SIDE], []), "shape [n, 3, 32, 32]"),
]


@pytest.mark.parametrize(("body", "message"), V2_BAD)
def test_malformed_v2_requests_are_400(client: TestClient, body: dict[str, Any], message: str) -> None:
    r = client.post(INFER, json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_content_type_nan_and_too_many_images(client: TestClient) -> None:
    body = files_request(FILES[:1])
    body["inputs"][0]["parameters"] = {"content_type": "utf8"}
    r = client.post(INFER, json=body)
    assert r.status_code == 400 and "content_type 'utf8'" in r.json()["error"]
    values = ",".join(["NaN"] + ["0"] * (3 * TINY_SIDE * TINY_SIDE - 1))
    tensor = f'{{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32], "data": [{values}]}}'
    raw = f'{{"inputs": [{tensor}]}}'
    r = client.post(INFER, content=raw.encode())
    assert r.status_code == 400 and "NaN or infinite" in r.json()["error"]
    r = client.post(INFER, json=files_request(FILES[:1] * 9))
    assert r.status_code == 413 and "9 images in one request; the limit is 8" in r.json()["error"]
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": [1, 3, 32, 32],
        "parameters": {"binary_data_size": 12},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    r = client.post(INFER, content=header + bytes(12), headers={HEADER_LENGTH: str(len(header))})
    assert (
        r.status_code == 400 and "carries 12 bytes; FP32 [1, 3, 32, 32] is 12288 bytes" in r.json()["error"]
    )


ROUTE_BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"files": [("model", (None, MODEL))]}, "file", "no 'file' part"),
    (
        {"data": {"model": MODEL, "colour": "red"}, "files": [("file", FILES[0])]},
        "colour",
        "unknown form field",
    ),
    ({"files": [("file", FILES[0])]}, "model", "'model' is required"),
    ({"data": {"model": MODEL, "top_k": "0"}, "files": [("file", FILES[0])]}, "top_k", "whole number >= 1"),
    ({"data": {"model": "nope"}, "files": [("file", FILES[0])]}, "model", "unknown model 'nope'"),
    ({"json": {"model": MODEL}}, "images", "'images' is required"),
    ({"json": {"model": MODEL, "images": [1]}}, "images", "base64 string or a list"),
    ({"json": {"model": MODEL, "images": []}}, "images", "holds no images"),
    ({"json": {"model": MODEL, "images": "x", "size": 2}}, "size", "unknown field 'size'"),
    ({"json": {"model": MODEL, "images": "x", "top_k": 0}}, "top_k", "top_k"),
]


@pytest.mark.parametrize(("kwargs", "param", "message"), ROUTE_BAD)
def test_malformed_image_route_requests(
    client: TestClient, kwargs: dict[str, Any], param: str, message: str
) -> None:
    r = client.post(ROUTE, **kwargs)
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert error["param"] == param and message in error["message"], error


def test_malformed_multipart_bodies_and_other_content_types(client: TestClient) -> None:
    boundary = "kiln-test-boundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{MODEL}\r\n'.encode()
    cases = [
        (head, "ends before its closing boundary"),  # truncated
        (b"no boundary in here", "does not contain its boundary"),
        (f"--{boundary}\r\nX-Nothing: 1\r\n\r\nabc\r\n--{boundary}--\r\n".encode(), "no Content-Disposition"),
    ]
    for body, message in cases:
        r = client.post(
            ROUTE, content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    r = client.post(ROUTE, content=b"x", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and "no valid boundary" in r.json()["error"]["message"]
    r = client.post(ROUTE, content=FILES[0], headers={"content-type": "image/jpeg"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]
    over = [("file", FILES[0])] * 20
    r = client.post(ROUTE, data={"model": MODEL}, files=over)
    assert r.status_code == 413, r.text


def test_routes_of_other_tasks_point_to_the_image_route(client: TestClient) -> None:
    r = client.post("/v1/classify", json={"model": MODEL, "input": "x"})
    assert r.status_code == 400 and "/v1/images/classify" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"})
    assert r.status_code == 400 and "/v1/images/classify" in r.json()["error"]["message"]


def test_an_embed_model_beside_it_keeps_its_routes(tiny_image_bundle: Path, tiny_bundle: Path) -> None:
    app = create_repository_app([tiny_image_bundle, tiny_bundle], Settings(threads=1))
    with TestClient(app) as c:
        r = c.post(ROUTE, json={"model": "tiny-embed", "images": [b64(FILES[0])]})
        assert r.status_code == 400 and "serves image-classify models" in r.json()["error"]["message"]
        r = c.post("/v2/models/tiny-embed/infer", json=files_request(FILES[:1]))
        assert r.status_code == 400 and "unknown input 'image'" in r.json()["error"]
        texts = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]}
        assert c.post("/v2/models/tiny-embed/infer", json=texts).status_code == 200
        assert c.post(INFER, json=files_request(FILES[:1])).status_code == 200
        doc = c.get("/openapi.json").json()
        assert ROUTE in doc["paths"]
        tensors = doc["components"]["schemas"]["InferRequest"]["properties"]["inputs"]["items"]["oneOf"]
        assert [t["properties"]["name"]["enum"] for t in tensors] == [["text"], ["image"], ["input"]]


# -- batching, request log, metrics, access log, API keys ---------------------------------------------------


class HeldImages:
    """An image model whose first batch waits for ``release``: later requests queue up behind it."""

    def __init__(self, model: ImageClassifyModel) -> None:
        self.model = model
        self.batches: list[int] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def prepare(self, images: ImageInputs, max_pixels: int) -> PreparedImages:
        return self.model.prepare(images, max_pixels)

    def embed(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        self.batches.append(len(rows))
        self.started.set()
        assert self.release.wait(10), "never released"
        return self.model.embed(rows)


def test_concurrent_requests_share_batches(tiny_image_bundle: Path, expected: np.ndarray) -> None:
    info, model = load_image_classify_model(load_bundle(tiny_image_bundle), threads=1)
    held = HeldImages(model)
    dp = DataPlane(Limits(), batching=BatchConfig(max_batch_size=8, max_wait_ms=50))
    dp.add(info, held)

    async def main() -> list[np.ndarray]:
        first = asyncio.ensure_future(dp.ainfer_images(MODEL, EncodedImages(FILES[:1])))
        await asyncio.to_thread(held.started.wait, 10)
        rest = [asyncio.ensure_future(dp.ainfer_images(MODEL, EncodedImages([f]))) for f in FILES[1:]]
        while dp.queue_depth(MODEL) < len(rest):
            await asyncio.sleep(0.01)
        held.release.set()
        done = await asyncio.gather(first, *rest)
        return [d.embeddings for d in done]

    try:
        results = asyncio.run(main())
    finally:
        dp.stop()
    assert held.batches == [1, len(FILES) - 1]
    np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-6)


def test_request_log_metrics_and_access_log(
    tiny_image_bundle: Path, tmp_path: Path, expected: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("sqlalchemy")
    from _fixtures.monitor_db import query

    url = f"sqlite:///{tmp_path / 'requests.db'}"
    settings = Settings(home=tmp_path, threads=1, monitor=True, monitor_db=url, monitor_sample=1.0)
    app = create_app(load_bundle(tiny_image_bundle), settings)
    with caplog.at_level(logging.INFO, logger="kiln.access"), TestClient(app) as c:
        assert c.post(INFER, json=files_request(FILES[:2])).status_code == 200
        files = [("file", ("a.png", FILES[2], "image/png"))]
        answered = c.post(ROUTE, data={"model": MODEL}, files=files)
        assert answered.status_code == 200
        assert (
            c.post(
                ROUTE, data={"model": MODEL}, files=[("file", ("x.jpg", b"junk", "image/jpeg"))]
            ).status_code
            == 400
        )
        assert app.state.request_log.flush(timeout=60)
        metrics = c.get("/metrics").text
        truth = {"request_id": answered.headers["x-request-id"], "label": TINY_LABELS[3]}
        stored = c.post("/v1/feedback", json=truth)
        assert stored.status_code == 200 and stored.json()["matched"] is True, stored.text
        wrong = c.post("/v1/feedback", json={**truth, "label": "giraffe"})
        assert wrong.status_code == 400 and "giraffe" in wrong.text
    logged = list(caplog.records)  # this server's lines only (the second one below logs too)
    rows = query(url, "SELECT route, status, model, n_inputs, n_tokens FROM kiln_requests ORDER BY ts")
    assert [tuple(r) for r in rows] == [
        ("/v2/models/{model_name}/infer", 200, MODEL, 2, None),
        (ROUTE, 200, MODEL, 1, None),
        (ROUTE, 400, MODEL, 0, None),
    ]
    samples = query(
        url, "SELECT text, text_tokens, label, score, text_sha256 FROM kiln_samples ORDER BY position"
    )
    assert len(samples) == 3
    assert {s[2] for s in samples} <= set(TINY_LABELS)
    by_label = sorted((s[2], round(s[3], 5)) for s in samples)
    want = sorted((labels_of(expected[i : i + 1])[0], round(float(expected[i].max()), 5)) for i in range(3))
    assert by_label == want
    assert all(s[0] is None and s[1] is None for s in samples)  # no text kept; images have no tokens
    kept_url = f"sqlite:///{tmp_path / 'kept.db'}"
    kept = dataclasses.replace(settings, monitor_db=kept_url, monitor_keep_text=True)
    app = create_app(load_bundle(tiny_image_bundle), kept)
    with TestClient(app) as c:
        assert c.post(INFER, json=files_request(FILES[:2])).status_code == 200
        assert app.state.request_log.flush(timeout=60)
    described = [r[0] for r in query(kept_url, "SELECT text FROM kiln_samples ORDER BY position")]
    assert described == [f"png 56x40, {len(FILES[0])} bytes", f"jpeg 56x40, {len(FILES[1])} bytes"]

    assert f'kiln_inference_items_total{{model="{MODEL}",version="1"}} 3.0' in metrics
    assert (
        f'kiln_http_requests_total{{method="POST",model="{MODEL}",route="{ROUTE}",status="200",'
        'version="1"} 1.0' in metrics
    )
    lines = [json.loads(r.getMessage()) for r in logged if r.name == "kiln.access"]
    routed = [
        (line["route"], line["model"], line["status"])
        for line in lines
        if line["route"] not in ("/metrics", "/v1/feedback")
    ]
    assert routed == [
        (INFER.replace(MODEL, "{model_name}"), MODEL, 200),
        (ROUTE, MODEL, 200),
        (ROUTE, MODEL, 400),
    ]


def test_api_key_scopes_cover_the_image_route(tiny_image_bundle: Path) -> None:
    secrets, records = {}, []
    for key_id, options in {
        "cnn": {"models": (MODEL,), "routes": ("infer",)},
        "other": {"models": ("x",)},
    }.items():
        secret, record = new_key(key_id, iterations=1000, **options)  # type: ignore[arg-type]
        secrets[key_id] = secret
        records.append(record)
    info, model = load_image_classify_model(load_bundle(tiny_image_bundle), threads=1)
    dp = DataPlane()
    dp.add(info, model)
    app = build_app(dp, Settings(), guard=Guard(KeyStore(tuple(records))))
    body = {"model": MODEL, "images": [b64(FILES[0])]}
    with TestClient(app) as c:
        assert c.post(ROUTE, json=body).status_code == 401
        assert (
            c.post(ROUTE, json=body, headers={"Authorization": f"Bearer {secrets['other']}"}).status_code
            == 403
        )
        r = c.post(ROUTE, json=body, headers={"X-API-Key": secrets["cnn"]})
        assert r.status_code == 200, r.text
        assert (
            c.post(INFER, json=files_request(FILES[:1]), headers={"X-API-Key": secrets["cnn"]}).status_code
            == 200
        )


def test_generated_requests_to_the_image_routes_get_no_server_error(tiny_image_bundle: Path) -> None:
    """Schemathesis on the image model's inference routes (JSON and multipart bodies, valid and not)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

    app = create_app(load_bundle(tiny_image_bundle), Settings(threads=1, max_batch_items=4))
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(
            path_regex=r"^(/v1/images/classify|/v2/models/\{model_name\}/infer)$"
        )
        ops = [result.ok() for result in schema.get_all_operations()]
        assert len(ops) == 2
        for operation in ops:

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                case.call_and_validate(
                    checks=[not_a_server_error, status_code_conformance, content_type_conformance]
                )

            check()
