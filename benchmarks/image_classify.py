"""EfficientNet-Lite0 static INT8 (QDQ, per-channel) against its fp32 reference, side by side in one run.

    python benchmarks/image_classify.py [--held-out 320] [--threads 2] [--latency-seconds 3]

Bar (issue 3): static INT8 >= 3.5x smaller than the fp32 ONNX graph, >= 99% top-1 agreement with fp32.

Data: views (random-resized crops and flips) of the sample photos that scikit-image and scikit-learn ship,
split by photo (kiln.tasks.images): calibration views and the ranking views that pick the recipe come
from CALIBRATION_PHOTOS; every number reported as "held-out" comes from views of the other photos, never
calibrated on and never used to choose. Accuracy counts the photos with a known ImageNet class (cat,
espresso, rocket, cameraman's tripod, palace), each whole photo and its held-out views.

Recipes tried (all S8S8 QDQ, per-channel weights, activations calibrated on 128 views): MinMax, Entropy,
Percentile (99.999), each with and without reduce_range (7-bit weights, kiln's default on x86 without
VNNI). The one with the best top-1 agreement on the ranking views is chosen; if it is under 99% there,
accuracy control ranks the nodes by what each costs the model's output (``rank_sensitivity(scope=
"output")``) and returns them to float one at a time, as long as the file stays >= 3.5x smaller, until
the ranking views pass; the best attempt is kept (said in the output). Then QDQ refinement
(``kiln.optimize.qdq_refine``) trains the chosen graph's integers toward fp32's logits on the calibration
views, kept if the ranking views agree at least as well. The chosen graph is also scored
with ORT's graph optimizations off (QDQ run in float): the gap is the integer kernels' own error on this
CPU (AVX2 without VNNI saturates).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from kiln.bench.latency import interleaved_latency
from kiln.bench.quality_classify import top1_agreement
from kiln.optimize.calibration import CalibrationReader
from kiln.optimize.cpu import cpu_info
from kiln.optimize.qdq_refine import refine_qdq
from kiln.optimize.quant_static import QuantizeStatic
from kiln.optimize.sensitivity import exclude_until_passes, rank_sensitivity
from kiln.runtime.image_preprocess import ImagePreprocessor
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.tasks.image_classify import image_quality, int8_static_cnn
from kiln.tasks.image_classify_torch import (
    EFFICIENTNET_WEIGHTS,
    OnnxImageClassifier,
    TorchImageClassifier,
    efficientnet_lite0_dir,
    export_image_onnx,
    load_efficientnet_lite0,
)
from kiln.tasks.image_labels import IMAGENET_1K
from kiln.tasks.images import (
    LABELLED_PHOTOS,
    PHOTOS,
    labelled_views,
    load_item,
    sample_photo_split,
    view_item,
)

NATURAL = ("chelsea", "coffee", "rocket", "camera", "china.jpg", "flower.jpg", "astronaut")
BAR_SIZE = 3.5
BAR_AGREEMENT = 0.99


def _mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _weights_only_int8(src: Path, dst: Path) -> Path:
    """``src`` with every Conv/Gemm weight rounded to symmetric per-channel INT8 and back (float graph)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    names = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    for t in model.graph.initializer:
        if t.name in names:
            w = numpy_helper.to_array(t)
            peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127.0
            scale = np.where(peak > 0, peak, 1.0).reshape((-1,) + (1,) * (w.ndim - 1))
            fake = (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(fake, t.name))
    onnx.save(model, str(dst))
    return dst


def _unfused(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    """``path`` run with ORT's graph optimizations off: each QDQ pair computed in float (no integer
    kernels), i.e. the quantization itself without the CPU kernels' own rounding or saturation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--held-out", type=int, default=320, help="held-out views (whole photos first)")
    ap.add_argument("--calibration", type=int, default=128)
    ap.add_argument("--ranking", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-seconds", type=float, default=3.0)
    ap.add_argument(
        "--methods",
        default="MinMax,Percentile",
        help="calibration methods (Entropy needs ~8 GB here and gave MinMax's ranges on this model)",
    )
    ap.add_argument("--max-float-nodes", type=int, default=8, help="accuracy control: at most this many")
    ap.add_argument(
        "--refine-steps",
        type=int,
        default=128,
        help="QDQ refinement of the chosen graph (kiln.optimize.qdq_refine) on the calibration views; 0: off",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="copy the fp32 and chosen int8 graphs here")
    args = ap.parse_args()

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-image-"))
    try:
        pre = ImagePreprocessor(load=load_item)
        ref = TorchImageClassifier(
            load_efficientnet_lite0(efficientnet_lite0_dir() / EFFICIENTNET_WEIGHTS),
            pre,
            list(IMAGENET_1K),
            args.threads,
        )
        split = sample_photo_split(args.calibration, args.ranking, args.held_out, args.seed)
        example = pre.encode(split.calibration[:2])
        fp32 = export_image_onnx(ref.module, example, work / "fp32.onnx", 18, True, "logits")
        onnx_fp32 = OnnxImageClassifier(OnnxBackend(fp32, args.threads), pre)
        held = labelled_views(split.held_out, IMAGENET_1K, "held-out")
        accepts = held.columns["accepts"]
        print(
            f"EfficientNet-Lite0, {len(split.calibration)} calibration + {len(split.ranking)} ranking views "
            f"of {len({i.split('/')[0] for i in split.calibration})} photos; {len(held)} held-out views of "
            f"{len({i.split('/')[0] for i in split.held_out})} other photos; CPU {cpu_info().summary()}"
        )
        ref_held = ref.embed(held.texts)
        ref_rank = ref.embed(split.ranking)
        fp32_held = onnx_fp32.embed(held.texts)
        print(
            "export: ONNX fp32 vs PyTorch fp32 on held-out: "
            f"max |diff| {np.abs(ref_held - fp32_held).max():.2e}, "
            f"top-1 agreement {top1_agreement(ref_held, fp32_held):.4f}  ({time.perf_counter() - t0:.0f} s)"
        )

        feeds = [pre.encode(split.calibration[i : i + 16]) for i in range(0, len(split.calibration), 16)]
        reader = CalibrationReader.for_model(fp32, [f for f in feeds if len(f[pre.input_name]) == 16])
        base = int8_static_cnn(cpu_info())
        tried: list[tuple[float, str, QuantizeStatic, Path]] = []
        print(f"\n{'recipe':<28}{'size MB':>9}{'ratio':>7}{'rank agr':>10}{'held agr':>10}{'secs':>6}")
        for method in args.methods.split(","):
            for rr in (False, True):
                recipe = base.model_copy(update={"calibration_method": method, "reduce_range": rr})
                name = f"{method}{' reduce_range' if rr else ''}"
                dst = work / f"int8-{method}-{int(rr)}.onnx"
                t = time.perf_counter()
                recipe.apply(fp32, dst, reader)
                q = OnnxImageClassifier(OnnxBackend(dst, args.threads), pre)
                rank_agr = top1_agreement(ref_rank, q.embed(split.ranking))
                held_agr = top1_agreement(ref_held, q.embed(held.texts))
                tried.append((rank_agr, name, recipe, dst))
                print(
                    f"{name:<28}{_mb(dst):>9.2f}{_mb(fp32) / _mb(dst):>7.2f}"
                    f"{rank_agr:>10.4f}{held_agr:>10.4f}"
                    f"{time.perf_counter() - t:>6.0f}",
                    flush=True,
                )
        rank_agr, name, recipe, chosen = max(tried, key=lambda x: x[0])
        print(
            f"\nchosen on the ranking views (never the held-out ones): {name}, "
            f"ranking agreement {rank_agr:.4f}"
        )
        if rank_agr < BAR_AGREEMENT:
            # accuracy control: nodes ranked by what each costs the model's answer (spliced alone into
            # the float graph), kept float while the file stays under the size bar; the first passing
            # attempt wins, else the one with the best ranking agreement
            ranking_nodes = rank_sensitivity(
                fp32, chosen, reader.feeds[:4], threads=args.threads, scope="output"
            )
            budget = int(fp32.stat().st_size / BAR_SIZE) - chosen.stat().st_size
            best = (rank_agr, chosen, name)
            attempt = 0

            def passes(path: Path) -> bool:
                nonlocal best, attempt
                attempt += 1  # one node more per attempt (group_size=1)
                runner = OnnxImageClassifier(OnnxBackend(path, args.threads), pre)
                agr = top1_agreement(ref_rank, runner.embed(split.ranking))
                print(f"  {attempt} most costly nodes float: ranking agreement {agr:.4f}", flush=True)
                if agr > best[0]:
                    kept = work / f"int8-ac-{attempt}.onnx"
                    shutil.copyfile(path, kept)
                    best = (agr, kept, f"{name} + {attempt} nodes float")
                return agr >= BAR_AGREEMENT

            result = exclude_until_passes(
                recipe,
                fp32,
                work / "int8-ac.onnx",
                ranking_nodes,
                passes,
                group_size=1,
                max_excluded=args.max_float_nodes,
                calibration=reader,
                max_float_bytes=budget,
            )
            print(
                f"accuracy control ({'passed' if result.passed else 'still under the bar'}), most costly "
                f"first: {[n.node for n in ranking_nodes[:6]]}"
            )
            rank_agr, chosen, name = best

        if args.refine_steps > 0:
            # distil the chosen graph's integers toward fp32's logits on the calibration views (their
            # mirror images too); kept if the ranking views agree at least as well as before
            refined = work / "int8-refined.onnx"
            report = refine_qdq(
                fp32,
                chosen,
                refined,
                reader.feeds,
                steps=args.refine_steps,
                threads=args.threads,
                flip_axis=3,
            )
            runner = OnnxImageClassifier(OnnxBackend(refined, args.threads), pre)
            agr = top1_agreement(ref_rank, runner.embed(split.ranking))
            print(
                f"QDQ refinement, {report.steps} steps ({report.seconds:.0f} s): calibration loss "
                f"{report.loss_before:.4f} -> {report.loss_after:.4f}, {report.changed_weights} of "
                f"{report.total_weights} weights moved; ranking agreement {rank_agr:.4f} -> {agr:.4f} "
                f"({'kept' if agr >= rank_agr else 'dropped'})",
                flush=True,
            )
            if agr >= rank_agr:
                rank_agr, chosen, name = agr, refined, f"{name} + refined"

        int8 = OnnxImageClassifier(OnnxBackend(chosen, args.threads), pre)
        int8_held = int8.embed(held.texts)
        q = image_quality(ref_held, int8_held, accepts, seed=args.seed)
        q_fp32 = image_quality(ref_held, fp32_held, accepts, seed=args.seed)
        whole = [view_item(n) for n in LABELLED_PHOTOS]
        ref_whole, int8_whole = ref.embed(whole), int8.embed(whole)

        def right(logits: np.ndarray) -> int:
            tops = zip(logits.argmax(1), LABELLED_PHOTOS, strict=True)
            return sum(int(t) in PHOTOS[n].accepts for t, n in tops)

        # the evaluation set's own noise floor: fp32 against fp32 on inputs moved by +-0.5 grey level
        # (less than 8-bit pixels can show), and weights-only INT8 (per-channel, max-abs, no activation
        # quantization): what 8-bit weights alone cost on these views
        x = pre.encode(held.texts)[pre.input_name]
        jitter = np.random.default_rng(args.seed).uniform(-0.5, 0.5, x.shape).astype(np.float32)
        noisy = x + jitter * np.float32(pre.cfg.scale / pre.cfg.std[0])
        floor = top1_agreement(fp32_held, onnx_fp32.embed_arrays(noisy))
        unfused = _unfused(chosen, x, args.threads)
        weights_only = _weights_only_int8(fp32, work / "weights-only.onnx")
        w8 = OnnxImageClassifier(OnnxBackend(weights_only, args.threads), pre).embed(held.texts)
        probs = np.exp(ref_held - ref_held.max(1, keepdims=True))
        confident = (probs / probs.sum(1, keepdims=True)).max(1) >= 0.5
        natural = np.asarray([p in NATURAL for p in held.columns["photo"]])

        one = pre.encode([held.texts[0]])
        fns = {
            "pytorch-fp32": partial(ref.run_encoded, one),
            "onnx-fp32": partial(onnx_fp32.run_encoded, one),
            "onnx-int8-static": partial(int8.run_encoded, one),
        }
        budget = args.latency_seconds * len(fns)
        lat = interleaved_latency(fns, batch_size=1, min_time_s=budget, max_time_s=4 * budget)

        ratio = _mb(fp32) / _mb(chosen)
        print(f"\n== EfficientNet-Lite0 static INT8 ({name}) vs fp32, measured side by side in this run ==")
        print(f"size: fp32 ONNX {_mb(fp32):.2f} MB, int8 {_mb(chosen):.2f} MB -> {ratio:.2f}x smaller")
        lo, hi = q.drop_ci95
        print(
            f"top-1 agreement with PyTorch fp32 on {len(held)} held-out views: {q.value:.4f} "
            f"(disagreement 95% CI {lo:.4f}..{hi:.4f}); ONNX fp32: {q_fp32.value:.4f}"
        )
        print(
            f"  noise floor: ONNX fp32 vs itself on inputs jittered by +-0.5 grey level: {floor:.4f}\n"
            f"  weights-only INT8 (fake-quantized, activations float): {top1_agreement(ref_held, w8):.4f}\n"
            f"  the chosen INT8 graph with ORT's fusions off (QDQ in float, no integer kernels): "
            f"{top1_agreement(ref_held, unfused):.4f}\n"
            f"  on the {int(confident.sum())} views where fp32 is confident (top-1 p >= 0.5): "
            f"{top1_agreement(ref_held[confident], int8_held[confident]):.4f}; on the {int(natural.sum())} "
            f"views of natural photos: {top1_agreement(ref_held[natural], int8_held[natural]):.4f}"
        )
        n_lab = int(q.extra.get("n_labelled", 0))
        print(
            f"top-1 accuracy on the {n_lab} held-out views of photos with a known ImageNet class: "
            f"fp32 {q.extra.get('reference_accuracy', float('nan')):.4f}, "
            f"int8 {q.extra.get('accuracy', float('nan')):.4f}"
        )
        print(
            f"top-1 accuracy on the {len(whole)} whole labelled photos ({', '.join(LABELLED_PHOTOS)}): "
            f"fp32 {right(ref_whole)}/{len(whole)}, int8 {right(int8_whole)}/{len(whole)}"
        )
        for k, st in lat.items():
            print(f"batch-1 latency {k:<18} p50 {st.p50_ms:7.2f} ms  p95 {st.p95_ms:7.2f} ms")
        p50 = {k: st.p50_ms for k, st in lat.items()}
        print(
            f"speed-up int8 vs ONNX fp32 {p50['onnx-fp32'] / p50['onnx-int8-static']:.2f}x, "
            f"vs PyTorch fp32 {p50['pytorch-fp32'] / p50['onnx-int8-static']:.2f}x"
        )
        ok_size, ok_agr = ratio >= BAR_SIZE, q.value >= BAR_AGREEMENT
        print(
            f"\nbar: >= {BAR_SIZE}x smaller: {'PASS' if ok_size else 'FAIL'} ({ratio:.2f}x); "
            f">= {BAR_AGREEMENT:.0%} top-1 agreement: {'PASS' if ok_agr else 'FAIL'} ({q.value:.2%})"
            f"  [{time.perf_counter() - t0:.0f} s]"
        )
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fp32, args.keep / "fp32.onnx")
            shutil.copyfile(chosen, args.keep / "int8.onnx")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
