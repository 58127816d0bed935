from __future__ import annotations

from kiln import __version__
from kiln.serve.dataplane import ModelInfo, TensorSpec
from kiln.serve.v2_rest import EXTENSIONS, SERVER_NAME, model_metadata


def test_model_metadata_follows_the_v2_shape() -> None:
    info = ModelInfo(
        name="m",
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, 384)),),
    )
    assert model_metadata(info) == {
        "name": "m",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
    }


def test_server_identity() -> None:
    assert SERVER_NAME == "kiln" and "binary_tensor_data" in EXTENSIONS and __version__
