"""Regenerate the Python modules of ``grpc_predict_v2.proto`` (run after editing the .proto).

    python src/kiln/serve/grpc/regen.py           # rewrite the generated files
    python src/kiln/serve/grpc/regen.py --check   # exit 1 if the committed files are out of date

It needs ``grpcio-tools==1.75.1`` (protoc for protobuf 6.31.1), which keeps the generated code loadable by
every protobuf >= 6.31.1 and grpcio >= 1.75.1. That pin conflicts with the protobuf 7 a development
environment may hold, so run it from a throwaway venv:

    python -m venv /tmp/kiln-regen && /tmp/kiln-regen/bin/pip install grpcio-tools==1.75.1
    /tmp/kiln-regen/bin/python src/kiln/serve/grpc/regen.py

One change is made to protoc's output: the descriptors go into a private descriptor pool instead of
protobuf's process-wide default one. The specification's package is ``inference``, the same as Triton's
own ``grpc_service.proto``, so ``tritonclient.grpc`` (or another KServe server) in the same process would
otherwise fail with "duplicate symbol 'inference.ServerLiveRequest'".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

GRPC_TOOLS_VERSION = "1.75.1"
HERE = Path(__file__).resolve().parent
SRC = HERE.parents[2]  # .../src
PROTO = HERE / "grpc_predict_v2.proto"
OUTPUTS = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")

DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL = (
    "# kiln: a private pool, so this file coexists with Triton's identical 'inference' package\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)
HEADER = (
    "# Generated from grpc_predict_v2.proto by src/kiln/serve/grpc/regen.py (grpcio-tools=={version}).\n"
    "# Do not edit: change the .proto and run that script (its docstring says how).\n"
)


def _installed_grpc_tools() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        return version("grpcio-tools")
    except PackageNotFoundError:
        return None


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc into ``out_dir``; return each output's final text by file name."""
    relative = PROTO.relative_to(SRC).as_posix()
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{SRC}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        relative,
    ]
    subprocess.run(cmd, check=True, cwd=SRC)
    generated = out_dir / PROTO.parent.relative_to(SRC)
    texts: dict[str, str] = {}
    for name in OUTPUTS:
        text = (generated / name).read_text(encoding="utf-8")
        if name.endswith("_pb2.py"):
            if text.count(DEFAULT_POOL) != 1:
                raise SystemExit(f"{name}: protoc's output changed shape; update regen.py's pool rewrite")
            text = text.replace(DEFAULT_POOL, PRIVATE_POOL)
        texts[name] = HEADER.format(version=GRPC_TOOLS_VERSION) + text
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the files are current")
    args = parser.parse_args(argv)
    installed = _installed_grpc_tools()
    if installed != GRPC_TOOLS_VERSION:
        print(
            f"regen.py needs grpcio-tools=={GRPC_TOOLS_VERSION}, found {installed or 'none'} "
            f"(see {Path(__file__).name}'s docstring for a throwaway venv)",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        texts = generate(Path(tmp))
    stale = [n for n, t in texts.items() if not (HERE / n).exists() or (HERE / n).read_text("utf-8") != t]
    if args.check:
        for name in stale:
            print(f"out of date: {HERE / name}", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        (HERE / name).write_text(texts[name], encoding="utf-8")
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
