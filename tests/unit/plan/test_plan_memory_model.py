"""The activation and allocator lines, checked against sums worked out by hand for tiny configs.

CNN: one RGB 16x16 image through a stem, a non-expanding block and an expanding stride-2 block (see the
live-set table in kiln.plan.cnn). Decoder: 2 layers, hidden 64, 4 heads / 2 KV heads of 16, MLP 128.
"""

from __future__ import annotations

from kiln.plan.catalog import Runtime
from kiln.plan.cnn import ConvNetSpec
from kiln.plan.memory import MIB, activation_bytes, glibc_retention, memory_breakdown
from kiln.plan.params import ArchSpec, count_parameters

TINY_CNN: dict[str, object] = {
    "model_type": "efficientnet",
    "image_size": 16,
    "width_coefficient": 1.0,
    "depth_coefficient": 1.0,
    "kernel_sizes": [3, 3],
    "in_channels": [32, 16],
    "out_channels": [16, 24],
    "strides": [1, 2],
    "num_block_repeats": [1, 1],
    "expand_ratios": [1, 6],
    "squeeze_expansion_ratio": 0,
    "num_classes": 10,
}
TINY_DECODER: dict[str, object] = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 1000,
}
GLIBC = Runtime(process_mib=0, gpu_context_mib=0, activation_slack=1.5, cpu_allocator="glibc")
ARENA = Runtime(process_mib=0, gpu_context_mib=0, activation_slack=1.5)


def _live(onednn: bool) -> dict[str, int]:
    return dict(ConvNetSpec.from_config(TINY_CNN).live_sets(onednn=onednn))


def test_cnn_live_sets_by_hand_cpu() -> None:
    # X = 3 x 16 x 16 = 768 (held all pass); stem: padded 3 x 17^2 = 867 -> 32 x 8 x 8 = 2048, RGB input
    # not reordered: conv = 2048 blocked + 2048 plain
    live = _live(onednn=True)
    assert live["stem conv"] == 768 + 867 + 2048 + 2048
    assert live["stem BN/ReLU6"] == 768 + 2 * 2048
    # block 0 (no expand): I = M = 2048 held with X; P = 32 x 10^2 = 3200, D = 2048, O = 16 x 64 = 1024
    b0 = "block 0 (32->32->16, 8x8)"
    assert live[f"{b0} pad"] == 768 + 2048 + 3200
    assert live[f"{b0} depthwise conv"] == 768 + 2048 + 3200 + 2048 + max(3200, 2048)
    assert live[f"{b0} project conv"] == 768 + 2048 + 2048 + 1024 + max(2048, 1024)
    # block 1 (16 -> 96, stride 2): I = 1024, M = 96 x 64 = 6144, P = 96 x 9^2 = 7776, D = 96 x 16 = 1536
    b1 = "block 1 (16->96->24, 8x8)"
    assert live[f"{b1} expand conv"] == 768 + 1024 + 6144 + 6144 + max(1024, 6144)
    assert live[f"{b1} expand BN/ReLU6"] == 768 + 1024 + 2 * 6144
    assert live[f"{b1} depthwise conv"] == 768 + 1024 + 6144 + 7776 + 1536 + max(7776, 1536)
    # head 24 -> 1280 at 4 x 4: body 384, head 20480
    assert live["head conv"] == 768 + 384 + 20480 + max(384, 20480)
    assert ConvNetSpec.from_config(TINY_CNN).activation_elements()[0] == 768 + 384 + 2 * 20480


def test_cnn_live_sets_by_hand_gpu() -> None:
    live = _live(onednn=False)  # cuDNN writes the plain output only
    assert live["stem conv"] == 768 + 867 + 2048
    assert live["block 1 (16->96->24, 8x8) depthwise conv"] == 768 + 1024 + 6144 + 7776 + 1536
    assert live["head conv"] == 768 + 384 + 20480


def test_cnn_feature_maps_and_activation_line() -> None:
    net = ConvNetSpec.from_config(TINY_CNN)
    maps = net.feature_maps()
    assert max(maps) == 20480 and {768, 867, 2048, 3200, 6144, 7776, 1536, 384} <= set(maps)
    spec = ArchSpec.from_config(TINY_CNN)
    cpu, how = activation_bytes(spec, "fp32", 16, 4, "cpu")
    assert cpu == 4 * (768 + 384 + 2 * 20480) * 4 and "head conv" in how
    # on GPU the head conv holds less (21632) than its BN, which holds input and output (768 + 2 x 20480)
    assert activation_bytes(spec, "fp32", 16, 4, "gpu")[0] == 4 * (768 + 2 * 20480) * 4


def test_decoder_activations_and_retention_by_hand() -> None:
    spec = ArchSpec.from_config(TINY_DECODER)
    # 2 x 8 = 16 tokens x (2 x 64 + 3 x 128) x 4 B + last-token logits 2 x 1000 x 4 B
    assert activation_bytes(spec, "fp32", 8, 2)[0] == 16 * 512 * 4 + 8000
    # largest tensor: the MLP's 16 x 128 x 4 B = 8192 -> 2 x 8192 kept; KV 2 x 2 x 2 x 16 x 8 x 2 x 4 B =
    # 8192, its K/V tensors (2048 B) come from the heap -> + 8192 / 2
    held, how = glibc_retention(spec, "fp32", 8, 2)
    assert held == 2 * 8192 + 4096 and "KV cache / 2" in how


def test_retention_respects_the_32_mib_mmap_ceiling() -> None:
    spec = ArchSpec.from_config({**TINY_DECODER, "intermediate_size": 256})
    # batch 64 x 1024 tokens: MLP 65536 x 256 x 4 B = 64 MiB is mmapped (not counted); hidden/q
    # 65536 x 64 x 4 B = 16 MiB is the largest heap tensor. KV = 32 MiB, K/V tensors 8 MiB each.
    held, _ = glibc_retention(spec, "fp32", 1024, 64)
    assert held == 2 * 16 * MIB + 16 * MIB
    # batch 512: K/V tensors 64 MiB each are mmapped: no stranded holes; every tensor is over 32 MiB
    # except k/v projections (65536 x 8 x 32 x 4 B = 64 MiB too): nothing is kept
    assert glibc_retention(spec, "fp32", 1024, 512)[0] == 0


def test_breakdown_uses_retention_on_cpu_and_slack_elsewhere() -> None:
    spec = ArchSpec.from_config(TINY_DECODER)
    params = count_parameters(spec)
    act = 16 * 512 * 4 + 8000
    cpu = memory_breakdown(spec, params, "fp32", 2, 8, GLIBC, "cpu")
    assert cpu.line("activations") == act and cpu.line("allocator") == 2 * 8192 + 4096
    gpu = memory_breakdown(spec, params, "fp32", 2, 8, GLIBC, "gpu")
    assert gpu.line("activations") == int(act * 1.5) and gpu.line("allocator") == 0
    arena = memory_breakdown(spec, params, "fp32", 2, 8, ARENA, "cpu")
    assert arena.line("activations") == int(act * 1.5) and arena.line("allocator") == 0
