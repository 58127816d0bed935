"""What this CPU can do, for choosing quantization settings that suit it."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    cores: int

    @property
    def has_vnni(self) -> bool:
        """AVX-512 VNNI or AVX-VNNI: 8-bit dot products without 16-bit intermediate saturation."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    @property
    def has_avx2(self) -> bool:
        return "avx2" in self.flags

    def summary(self) -> str:
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in self.flags]
        return f"{self.model} ({self.cores} cores; {', '.join(isa) or 'no AVX2'})"


def parse_cpuinfo(text: str, cores: int) -> CpuInfo:
    model = platform.processor() or "unknown CPU"
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", "unknown CPU", platform.machine()):
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return CpuInfo(model=model, flags=frozenset(flags), cores=cores)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    import os

    path = Path("/proc/cpuinfo")
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return parse_cpuinfo(text, os.cpu_count() or 1)
