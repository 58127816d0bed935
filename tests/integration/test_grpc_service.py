"""The gRPC service in process (grpc.aio server + client on a free port) over the tiny bundle's real model."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest

from _fixtures.embeddings import bundle_embeddings
from _fixtures.tiny_bundle import TINY_DIM, TINY_MAX_LENGTH
from kiln import __version__
from kiln.bundle.load import load_bundle
from kiln.errors import OverloadedError
from kiln.serve.dataplane import DataPlane, Inference, Limits, ModelInfo, TensorSpec
from kiln.serve.grpc import grpc_predict_v2_pb2 as pb
from kiln.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from kiln.serve.grpc.service import INTERNAL_MESSAGE, bind, create_grpc_server
from kiln.serve.models import EmbedModel, load_embed_model
from kiln.serve.v2_codec import encode_bytes_tensor

MODEL = "tiny-embed"
TEXTS = ["The quick brown fox jumps over the lazy dog", "hello world", "héllo wörld ünknown"]
Stub = pb_grpc.GRPCInferenceServiceStub


@pytest.fixture(scope="module")
def loaded(tiny_bundle: Path) -> tuple[ModelInfo, EmbedModel]:
    return load_embed_model(load_bundle(tiny_bundle), threads=1)


@pytest.fixture
def dataplane(loaded: tuple[ModelInfo, EmbedModel]) -> Iterator[DataPlane]:
    dp = DataPlane(Limits(max_batch_items=8))
    dp.add(*loaded)
    yield dp
    dp.stop()


@pytest.fixture(scope="module")
def expected(tiny_bundle: Path) -> np.ndarray:
    return bundle_embeddings(tiny_bundle, TEXTS, TINY_MAX_LENGTH)


@asynccontextmanager
async def serving(dataplane: DataPlane, max_message_bytes: int = 1 << 20) -> AsyncIterator[Stub]:
    server = create_grpc_server(dataplane, max_message_bytes)
    port = bind(server, "127.0.0.1", 0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Stub(channel)
    finally:
        await server.stop(None)


def run(dataplane: DataPlane, scenario: Callable[[Stub], Awaitable[None]], **options: int) -> None:
    async def main() -> None:
        async with serving(dataplane, **options) as stub:
            await scenario(stub)

    asyncio.run(main())


def infer_request(texts: Sequence[str], model: str = MODEL, raw: bool = True) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="req-7")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    if raw:
        request.raw_input_contents.append(encode_bytes_tensor(list(texts)))
    else:
        tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return request


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


# -- health and metadata ----------------------------------------------------------------------------
def test_health(dataplane: DataPlane) -> None:
    async def scenario(stub: Stub) -> None:
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL))).ready
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="1"))).ready
        missing = await rpc_error(stub.ModelReady(pb.ModelReadyRequest(name="missing")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        assert missing.details() == f"unknown model 'missing'; this server serves: '{MODEL}'"
        version = await rpc_error(stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="7")))
        assert version.code() == grpc.StatusCode.NOT_FOUND and "has no version '7'" in version.details()
        dataplane.drain()  # shutting down: alive, but not ready
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL))).ready

    run(dataplane, scenario)


def test_metadata(dataplane: DataPlane) -> None:
    async def scenario(stub: Stub) -> None:
        server = await stub.ServerMetadata(pb.ServerMetadataRequest())
        assert (server.name, server.version, list(server.extensions)) == ("kiln", __version__, [])
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL))
        assert (meta.name, list(meta.versions), meta.platform) == (MODEL, ["1"], "onnxruntime_onnx")
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("text", "BYTES", [-1])]
        assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
            ("embedding", "FP32", [-1, TINY_DIM])
        ]
        missing = await rpc_error(stub.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
        assert missing.code() == grpc.StatusCode.NOT_FOUND and "unknown model 'nope'" in missing.details()

    run(dataplane, scenario)


# -- inference --------------------------------------------------------------------------------------
def test_infer_raw(dataplane: DataPlane, expected: np.ndarray) -> None:
    async def scenario(stub: Stub) -> None:
        response = await stub.ModelInfer(infer_request(TEXTS))
        assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "req-7")
        (out,) = response.outputs
        assert (out.name, out.datatype, list(out.shape)) == ("embedding", "FP32", [len(TEXTS), TINY_DIM])
        got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(len(TEXTS), TINY_DIM)
        np.testing.assert_allclose(got, expected, atol=1e-6)

    run(dataplane, scenario)


def test_infer_typed_contents(dataplane: DataPlane, expected: np.ndarray) -> None:
    async def scenario(stub: Stub) -> None:
        request = infer_request(TEXTS, raw=False)
        request.model_version = "1"
        request.outputs.add(name="embedding")
        response = await stub.ModelInfer(request)
        assert not response.raw_output_contents
        got = np.asarray(response.outputs[0].contents.fp32_contents, dtype=np.float32)
        np.testing.assert_allclose(got.reshape(len(TEXTS), TINY_DIM), expected, atol=1e-6)

    run(dataplane, scenario)


def test_infer_errors(dataplane: DataPlane) -> None:
    async def scenario(stub: Stub) -> None:
        unknown = await rpc_error(stub.ModelInfer(infer_request(["hi"], model="nope")))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        assert unknown.details() == f"unknown model 'nope'; this server serves: '{MODEL}'"

        bad_name = infer_request(["hi"])
        bad_name.inputs[0].name = "txt"
        invalid = await rpc_error(stub.ModelInfer(bad_name))
        assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.details() == "unknown input 'txt': this model takes one input, 'text'"

        empty = await rpc_error(stub.ModelInfer(infer_request(["hi", ""])))
        assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and "text 1 is empty" in empty.details()

        many = await rpc_error(stub.ModelInfer(infer_request(["x"] * 9)))  # the limit is 8 texts
        assert many.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "9 texts in one request; the limit is 8" in many.details()

    run(dataplane, scenario)


def test_message_over_the_size_limit_is_refused(dataplane: DataPlane) -> None:
    async def scenario(stub: Stub) -> None:
        big = await rpc_error(stub.ModelInfer(infer_request(["word " * 500])))
        assert big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in big.details()
        assert (await stub.ModelInfer(infer_request(["small"]))).outputs  # the server is still fine

    run(dataplane, scenario, max_message_bytes=1000)


class _Failing(DataPlane):
    def __init__(self, error: Exception, info: ModelInfo) -> None:
        super().__init__()
        self.error = error
        self.info = info

    def resolve(self, name: str, version: str | None = None) -> ModelInfo:
        return self.info

    async def ainfer(
        self, model_name: str, texts: Sequence[str], *, with_tokens: bool = False, version: str | None = None
    ) -> Inference:
        raise self.error


def test_unexpected_error_is_internal_without_details(
    loaded: tuple[ModelInfo, EmbedModel], caplog: pytest.LogCaptureFixture
) -> None:
    failing = _Failing(RuntimeError("secret detail at /srv/model.onnx"), loaded[0])

    async def scenario(stub: Stub) -> None:
        error = await rpc_error(stub.ModelInfer(infer_request(["hi"])))
        assert error.code() == grpc.StatusCode.INTERNAL
        assert error.details() == INTERNAL_MESSAGE
        assert "secret" not in str(error.debug_error_string())

    with caplog.at_level(logging.ERROR, logger="kiln.serve"):
        run(failing, scenario)
    assert "gRPC ModelInfer failed" in caplog.text and "secret detail" in caplog.text  # logged only


def test_overloaded_is_resource_exhausted_with_retry_after(loaded: tuple[ModelInfo, EmbedModel]) -> None:
    failing = _Failing(OverloadedError("the queue of 'tiny-embed' is full", retry_after=4), loaded[0])

    async def scenario(stub: Stub) -> None:
        call = stub.ModelInfer(infer_request(["hi"]))
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == "the queue of 'tiny-embed' is full"
        assert ("retry-after", "4") in tuple(error.trailing_metadata() or ())

    run(failing, scenario)


class _Blocking:
    """A model whose embed waits until released, to show the event loop stays free meanwhile."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(10), "never released"
        return np.ones((len(texts), 2), dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [1] * len(texts)


def test_health_answers_while_a_batch_runs() -> None:
    model = _Blocking()
    dp = DataPlane()
    info = ModelInfo(
        "slow", (TensorSpec("text", "BYTES", (-1,)),), (TensorSpec("embedding", "FP32", (-1, 2)),)
    )
    dp.add(info, model)

    async def scenario(stub: Stub) -> None:
        infer = asyncio.ensure_future(stub.ModelInfer(infer_request(["a"], model="slow")))
        assert await asyncio.to_thread(model.entered.wait, 10)
        live = await asyncio.wait_for(stub.ServerLive(pb.ServerLiveRequest()), timeout=5)
        assert live.live and not infer.done()
        model.release.set()
        response = await asyncio.wait_for(infer, timeout=10)
        assert list(response.outputs[0].shape) == [1, 2]

    try:
        run(dp, scenario)
    finally:
        model.release.set()
        dp.stop()


def test_tritonclient_grpc_aio(dataplane: DataPlane, expected: np.ndarray) -> None:
    """tritonclient's own protobuf package ('inference', like ours) loads beside kiln's in one process."""
    aio = pytest.importorskip("tritonclient.grpc.aio")
    import tritonclient.grpc as grpcclient

    async def main() -> None:
        server = create_grpc_server(dataplane, 1 << 20)
        port = bind(server, "127.0.0.1", 0)
        await server.start()
        client = aio.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            assert await client.is_server_live() and await client.is_model_ready(MODEL)
            inp = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
            inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
            result = await client.infer(MODEL, [inp])
            np.testing.assert_allclose(result.as_numpy("embedding"), expected, atol=1e-6)
        finally:
            await client.close()
            await server.stop(None)

    asyncio.run(main())
