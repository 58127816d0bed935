from kiln.optimize.cpu import parse_cpuinfo
from kiln.optimize.recipes import int8_dynamic_for

EPYC = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n"
SAPPHIRE = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_vnni amx_int8\n"


def test_parse_flags() -> None:
    info = parse_cpuinfo(EPYC, 2)
    assert info.has_avx2 and not info.has_vnni
    assert "avx2" in info.summary()


def test_int8_settings_follow_the_cpu() -> None:
    assert int8_dynamic_for(parse_cpuinfo(EPYC, 2)).reduce_range is True
    assert int8_dynamic_for(parse_cpuinfo(SAPPHIRE, 8)).reduce_range is False
    assert int8_dynamic_for(parse_cpuinfo(EPYC, 2)).per_channel is True
