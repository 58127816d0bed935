"""The hardware catalog: devices (memory, bandwidth, throughput, power, prices) and runtimes (overheads).

The shipped catalog is ``catalog.json`` beside this module. ``load_catalog(extra)`` merges a user's file
(``.json``, or ``.toml`` on Python 3.11+) over it, field by field: a user can add a target, or change one
price of a shipped one. Every file is validated; a wrong field name, a missing number or a negative price
raises :class:`PlanError` naming the file, the entry and the field.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kiln.plan.errors import PlanError

_STRICT = ConfigDict(extra="forbid", frozen=True)


class Price(BaseModel):
    """A price with the date it held and where it came from."""

    model_config = _STRICT

    usd_per_hour: float = Field(gt=0)
    date: str
    source: str


class Purchase(BaseModel):
    model_config = _STRICT

    usd: float = Field(gt=0)
    date: str
    source: str


class Serverless(BaseModel):
    """Per-second billing of busy time only (no charge while idle)."""

    model_config = _STRICT

    usd_per_second: float = Field(gt=0)
    date: str
    source: str


class Target(BaseModel):
    """One device kind. ``memory_gib`` per device; throughputs are dense peaks per device (TFLOP/s, TOP/s);
    the efficiencies scale them to what a real runtime reaches (None: the catalog's defaults)."""

    model_config = _STRICT

    kind: Literal["gpu", "cpu"]
    description: str = ""
    memory_gib: float = Field(gt=0)
    bandwidth_gbs: float = Field(gt=0)
    fp32_tflops: float | None = Field(default=None, gt=0)
    fp16_tflops: float | None = Field(default=None, gt=0)
    fp8_tflops: float | None = Field(default=None, gt=0)
    int8_tops: float | None = Field(default=None, gt=0)
    power_w: float | None = Field(default=None, gt=0)
    devices_per_node: int = Field(default=1, ge=1)
    memory_usable_fraction: float | None = Field(default=None, gt=0, le=1)
    compute_efficiency: float | None = Field(default=None, gt=0, le=1)
    bandwidth_efficiency: float | None = Field(default=None, gt=0, le=1)
    spec_source: str = ""
    cloud: Price | None = None
    purchase: Purchase | None = None
    serverless: Serverless | None = None

    @model_validator(mode="after")
    def _has_throughput(self) -> Target:
        if self.fp32_tflops is None and self.fp16_tflops is None:
            raise ValueError("needs fp32_tflops or fp16_tflops (dense throughput)")
        return self


class Runtime(BaseModel):
    """What a runtime adds beside weights and activations. ``process_mib``: a CPU serving process before
    any weights (interpreter, libraries, thread pools); ``gpu_context_mib``: per GPU (CUDA context,
    library workspaces); ``load_copies``: weight copies resident at once while loading (CPU);
    ``activation_slack``: allocator overhead on activations where the allocator is an arena (GPU caching
    allocators, ONNX Runtime); ``cpu_allocator``: ``glibc`` for CPU runtimes that allocate each tensor
    with malloc (PyTorch), whose heap retention is then counted from first principles instead of the
    slack (see :func:`kiln.plan.memory.glibc_retention`); ``call_overhead_ms``: fixed CPU time of one
    forward call beyond its FLOPs and bytes (Python, dispatch, thread wake-ups), added to CPU throughput
    estimates."""

    model_config = _STRICT

    description: str = ""
    process_mib: float = Field(ge=0)
    gpu_context_mib: float = Field(ge=0)
    load_copies: float = Field(default=1.0, ge=1)
    activation_slack: float = Field(default=1.0, ge=1)
    cpu_allocator: Literal["glibc", "arena"] = "arena"
    call_overhead_ms: float = Field(default=0.0, ge=0)
    source: str = ""


class Defaults(BaseModel):
    model_config = _STRICT

    memory_usable_fraction: float = Field(default=0.9, gt=0, le=1)
    compute_efficiency: float = Field(default=0.5, gt=0, le=1)
    bandwidth_efficiency: float = Field(default=0.8, gt=0, le=1)
    electricity_usd_per_kwh: float = Field(default=0.15, ge=0)
    pue: float = Field(default=1.3, ge=1)
    amortization_years: float = Field(default=3.0, gt=0)


class Catalog(BaseModel):
    model_config = _STRICT

    version: int = 1
    about: str = ""
    defaults: Defaults = Defaults()
    runtimes: dict[str, Runtime] = Field(default_factory=dict)
    targets: dict[str, Target] = Field(default_factory=dict)

    def target(self, name: str) -> Target:
        """Look a target up by its catalog key, ignoring case (``H100-80GB`` finds ``h100-80gb``)."""
        if name in self.targets:
            return self.targets[name]
        folded = {key.casefold(): t for key, t in self.targets.items()}
        try:
            return folded[name.casefold()]
        except KeyError:
            known = ", ".join(sorted(self.targets))
            raise PlanError(
                f"unknown target {name!r}; the catalog has: {known}. Add your own with --catalog FILE"
            ) from None

    def runtime(self, name: str) -> Runtime:
        try:
            return self.runtimes[name]
        except KeyError:
            known = ", ".join(sorted(self.runtimes))
            raise PlanError(f"unknown runtime {name!r}; the catalog has: {known}") from None

    def efficiency(self, t: Target) -> tuple[float, float, float]:
        """(usable memory fraction, compute efficiency, bandwidth efficiency) of ``t``."""
        d = self.defaults
        return (
            t.memory_usable_fraction or d.memory_usable_fraction,
            t.compute_efficiency or d.compute_efficiency,
            t.bandwidth_efficiency or d.bandwidth_efficiency,
        )


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PlanError(f"catalog file {path} does not exist; pass a .json or .toml file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise PlanError(f"{path}: TOML catalogs need Python 3.11+; write it as JSON instead") from None
        try:
            data: object = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PlanError(f"catalog file {path} is not valid TOML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"catalog file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"catalog file {path} must hold a table/object with 'targets' (and 'runtimes')")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _validate(data: dict[str, Any], label: str) -> Catalog:
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise PlanError(f"catalog {label} is not valid: {problems}") from None


def shipped_catalog_data() -> dict[str, Any]:
    text = resources.files("kiln.plan").joinpath("catalog.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def load_catalog(extra: Path | str | None = None) -> Catalog:
    """The shipped catalog, with ``extra`` (a user's file) merged over it when given."""
    data = shipped_catalog_data()
    if extra is None:
        return _validate(data, "shipped with kiln")
    path = Path(extra).expanduser()
    user = _read(path)
    _validate(_merge({"targets": {}, "runtimes": {}}, _fill_new(user, data)), str(path))
    return _validate(_merge(data, user), f"{path} merged over the shipped one")


def _fill_new(user: dict[str, Any], shipped: dict[str, Any]) -> dict[str, Any]:
    """The user's file with each overridden entry completed from the shipped one (so partial entries,
    like a new price for a shipped target, validate on their own and errors name the user's file)."""
    out = dict(user)
    for section in ("targets", "runtimes"):
        entries = user.get(section)
        if isinstance(entries, dict):
            base = shipped.get(section, {})
            out[section] = {
                k: _merge(base.get(k, {}), v) if isinstance(v, dict) else v for k, v in entries.items()
            }
    return out
