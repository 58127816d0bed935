"""``kiln build``: reference → variants → parity gate → held-out quality → speed and size → choice
→ bundle."""

from __future__ import annotations

import platform
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from kiln import __version__
from kiln.analyze.facts import ModelFacts
from kiln.analyze.inspect import inspect_model
from kiln.bench.latency import interleaved_latency
from kiln.bench.memory import peak_rss_mb
from kiln.bench.parity import check_parity, judge_parity, parity_inputs
from kiln.bench.quality import embed_quality
from kiln.bench.scores import VariantRecord
from kiln.bundle.card import model_card
from kiln.bundle.manifest import EvalRecord, Manifest, SourceRecord
from kiln.bundle.write import write_bundle
from kiln.errors import BuildError, TaskError
from kiln.optimize.cpu import cpu_info
from kiln.optimize.export import export_onnx
from kiln.optimize.recipes import ExportOnnx, QuantizeDynamic, int8_dynamic_for, int8_dynamic_per_tensor
from kiln.optimize.select import BASELINE, choose
from kiln.report.variants import variants_table
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.settings import Settings
from kiln.sources.resolve import ResolvedSource, resolve_source
from kiln.tasks.datasets import rotten_tomatoes, stratified_split
from kiln.tasks.embed_config import TASK_NAME, EmbedConfig
from kiln.tasks.embed_torch import GRAPH_OUTPUT, TorchEmbedder, check_embed_config

REFERENCE = "pytorch-fp32"


class BuildOptions(BaseModel):
    model: str | None = Field(default=None, description="folder or hub id; None = the default model")
    task: str = TASK_NAME
    out: Path | None = None
    max_quality_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    eval_samples: int = Field(default=4000, ge=0, description="labelled examples drawn (0 = all)")
    seed: int = 0
    threads: int = 0
    latency_seconds: float = Field(default=3.0, gt=0, description="measuring time per variant and batch size")
    measure_memory: bool = True


@dataclass
class BuildResult:
    bundle_dir: Path
    manifest: Manifest
    notes: list[str] = field(default_factory=list)


def bundle_name(spec: str) -> str:
    """A folder-safe name for a model spec (``owner/name@rev`` → ``name``)."""
    base = spec.split("@", 1)[0].rstrip("/\\").replace("\\", "/").split("/")[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base)


def _ensure_tokenizer_json(model_dir: Path, work: Path) -> Path:
    """Serving reads ``tokenizer.json`` with the tokenizers library; convert slow tokenizers once."""
    found = model_dir / "tokenizer.json"
    if found.is_file():
        return found
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:
        raise TaskError(f"{model_dir} has no tokenizer kiln can read ({exc})") from exc
    if not getattr(tok, "is_fast", False):
        raise TaskError(f"{model_dir}'s tokenizer has no fast (tokenizers) version; kiln cannot serve it")
    tok.save_pretrained(work / "tokenizer")
    return work / "tokenizer" / "tokenizer.json"


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@contextmanager
def _step(progress: Progress, description: str, total: int = 1) -> Iterator[Callable[[int], None]]:
    task = progress.add_task(description, total=total)

    def advance(n: int = 1) -> None:
        progress.advance(task, n)

    yield advance
    progress.update(task, completed=total)


def _typical_text(texts: list[str], tokenizer: TextTokenizer) -> str:
    lengths = tokenizer.count_tokens(texts)
    return texts[int(np.argsort(lengths)[len(lengths) // 2])]


def build(opts: BuildOptions, console: Console | None = None) -> BuildResult:
    console = console or Console()
    settings = Settings.from_env()
    if opts.task != TASK_NAME:
        raise TaskError(f"task {opts.task!r} is not supported yet; available: {TASK_NAME}")
    source = resolve_source(opts.model)
    model_dir = Path(source.path)
    if not model_dir.is_dir():
        raise TaskError(f"{model_dir} is a single file; task embed needs a Hugging Face model folder")
    check_embed_config(model_dir)
    facts = inspect_model(source)
    if facts.safety:
        raise TaskError(
            f"{model_dir} has unsafe files; kiln will not load it:\n  " + "\n  ".join(facts.safety)
        )
    name = bundle_name(source.model_id or source.spec)
    out = Path(opts.out) if opts.out else settings.bundles_dir / name
    max_length = int(min(facts.max_sequence_length or 256, 512))

    settings.home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=settings.home))
    try:
        return _build_in(opts, console, source, facts, name, out, max_length, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_in(
    opts: BuildOptions,
    console: Console,
    source: ResolvedSource,
    facts: ModelFacts,
    name: str,
    out: Path,
    max_length: int,
    work: Path,
) -> BuildResult:
    model_dir = Path(source.path)
    tok_path = _ensure_tokenizer_json(model_dir, work)
    tokenizer = TextTokenizer(tok_path, max_length)
    data = rotten_tomatoes(max_samples=opts.eval_samples or None, seed=opts.seed)
    train, test = stratified_split(data, test_fraction=0.5, seed=opts.seed)
    cpu = cpu_info()
    console.print(
        f"[bold]kiln build[/] {source.spec} → {out}\n"
        f"  task {TASK_NAME}, {facts.parameters or '?'} parameters, license {facts.license}; "
        f"CPU {cpu.summary()}\n"
        f"  held-out evaluation: {data.name}, {len(train.texts)} to fit the probe, {len(test.texts)} held out"
    )
    records: dict[str, VariantRecord] = {}
    runners: dict[str, Callable[[dict[str, np.ndarray]], np.ndarray]] = {}
    embedders: dict[str, Any] = {}
    files: dict[str, Path] = {}

    with _progress(console) as progress:
        with _step(progress, "load PyTorch fp32 reference"):
            reference = TorchEmbedder(model_dir, tokenizer, opts.threads)
        records[REFERENCE] = VariantRecord(
            name=REFERENCE,
            format="pytorch",
            recipe=[{"kind": "reference", "dtype": "fp32", "runtime": "torch"}],
        )
        runners[REFERENCE] = reference.run_encoded
        embedders[REFERENCE] = reference

        fp32_path = work / f"{BASELINE}.onnx"
        export = ExportOnnx()
        with _step(progress, "export ONNX fp32 (dynamo)"):
            example = tokenizer.encode(["kiln exports this sentence.", "and a second, longer one for shape."])
            export_onnx(reference.module, example, fp32_path, export, GRAPH_OUTPUT)
        records[BASELINE] = VariantRecord(
            name=BASELINE, format="onnx", recipe=[export.model_dump()], file=fp32_path.name
        )
        files[BASELINE] = fp32_path

        quantized: list[tuple[str, QuantizeDynamic]] = [
            ("onnx-int8-dynamic", int8_dynamic_for(cpu)),
            ("onnx-int8-dynamic-per-tensor", int8_dynamic_per_tensor()),
        ]
        with _step(progress, "quantize INT8 (dynamic)", total=len(quantized)) as advance:
            for vname, recipe in quantized:
                path = work / f"{vname}.onnx"
                records[vname] = VariantRecord(
                    name=vname,
                    format="onnx",
                    recipe=[export.model_dump(), recipe.model_dump()],
                    file=path.name,
                )
                try:
                    recipe.apply(fp32_path, path)
                    files[vname] = path
                except BuildError as exc:
                    records[vname].status, records[vname].reason = "failed", str(exc)
                advance(1)

        feeds = parity_inputs(tokenizer, test.texts)
        onnx_names = [n for n in files if records[n].status == "ok"]
        with _step(progress, "parity gate vs reference", total=len(onnx_names)) as advance:
            for vname in onnx_names:
                rec = records[vname]
                try:
                    emb = OnnxEmbedder(OnnxBackend(files[vname], opts.threads), tokenizer)
                except Exception as exc:
                    rec.status, rec.reason = "failed", f"ONNX Runtime cannot load it: {exc}"
                    advance(1)
                    continue
                rec.parity = check_parity(reference.run_encoded, emb.run_encoded, feeds)
                lossy = any(r.get("precision") == "lossy" for r in rec.recipe)
                reason = judge_parity(rec.parity, "lossy" if lossy else "exact")
                if reason:
                    rec.status, rec.reason = "rejected", reason
                else:
                    embedders[vname], runners[vname] = emb, emb.run_encoded
                rec.scores.file_bytes = files[vname].stat().st_size
                advance(1)
        records[REFERENCE].scores.file_bytes = sum(
            (model_dir / f).stat().st_size for f in facts.weight_files if (model_dir / f).is_file()
        )

        live = [n for n in records if records[n].status == "ok"]
        texts = train.texts + test.texts
        embeddings: dict[str, np.ndarray] = {}
        with _step(progress, "embed held-out data", total=len(live) * len(texts)) as advance:
            for vname in live:
                embeddings[vname] = embedders[vname].embed(texts, batch_size=32, on_batch=advance)
        n_train = len(train.texts)
        ref_emb = embeddings[REFERENCE]
        for vname in live:
            var_emb = embeddings[vname]
            records[vname].scores.quality = embed_quality(
                ref_emb[:n_train],
                ref_emb[n_train:],
                var_emb[:n_train],
                var_emb[n_train:],
                train.labels,
                test.labels,
                seed=opts.seed,
            )

        one = [_typical_text(test.texts, tokenizer)]
        batch = test.texts[:32]
        for key, inputs in (("batch1", one), ("batch32", batch)):
            fns = {n: (lambda e=embedders[n], x=inputs: e.embed(x, batch_size=len(x))) for n in live}
            with _step(progress, f"latency at {key.replace('batch', 'batch ')} (interleaved)"):
                budget = opts.latency_seconds * len(fns)
                stats = interleaved_latency(
                    fns, batch_size=len(inputs), min_time_s=budget, max_time_s=max(4 * budget, 10.0)
                )
            for vname, st in stats.items():
                records[vname].scores.latency[key] = st

        if opts.measure_memory:
            with _step(progress, "peak memory (fresh process each)", total=len(live)) as advance:
                for vname in live:
                    is_ref = vname == REFERENCE
                    try:
                        records[vname].scores.peak_rss_mb = peak_rss_mb(
                            "torch-embed" if is_ref else "onnx",
                            str(model_dir if is_ref else files[vname]),
                            str(tok_path),
                            threads=opts.threads,
                        )
                    except BuildError as exc:
                        console.print(f"[yellow]memory of {vname} not measured: {exc}")
                    advance(1)

    variants = list(records.values())
    choice = choose(variants, opts.max_quality_drop, REFERENCE)
    dimension = int(ref_emb.shape[1])
    config = EmbedConfig(max_length=max_length, dimension=dimension)
    manifest = Manifest(
        kiln_version=__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model_name=name,
        task=TASK_NAME,
        task_config=config.model_dump(),
        license=facts.license,
        source=SourceRecord(
            kind=source.kind, spec=source.spec, path=str(model_dir), revision=source.revision
        ),
        machine=_machine(cpu.summary()),
        evaluation=EvalRecord(
            dataset=data.name,
            seed=opts.seed,
            n_train=len(train.texts),
            n_test=len(test.texts),
            notes="stratified split; logistic-regression probe fitted on each variant's own train embeddings",
        ),
        budget={"max_quality_drop": opts.max_quality_drop, "metric": "probe_accuracy"},
        variants=variants,
        chosen=choice.name,
        chosen_reason=choice.reason,
        artifact="model.onnx",
    )
    for v in manifest.variants:
        v.file = "model.onnx" if v.name == choice.name else None
    write_bundle(
        out,
        manifest,
        files={"model.onnx": files[choice.name], "tokenizer.json": tok_path},
        texts={"README.md": model_card(manifest)},
    )
    from kiln.bundle.load import load_bundle

    final = load_bundle(out).manifest
    console.print(variants_table(final.variants, final.chosen))
    for v in final.variants:
        if v.reason:
            console.print(f"  [red]{v.name}[/]: {v.reason}")
    console.print(f"[bold]chosen:[/] {final.chosen} — {final.chosen_reason}")
    return BuildResult(bundle_dir=out, manifest=final)


def _machine(cpu: str) -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover - build always has torch
        pass
    return info
