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
from functools import partial
from pathlib import Path
from typing import Any, Literal

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
from kiln.analyze.license import license_warning
from kiln.analyze.safety import refuse_unsafe
from kiln.bench.latency import interleaved_latency
from kiln.bench.memory import peak_rss_mb
from kiln.bench.parity import check_parity, parity_inputs
from kiln.bench.scores import VariantRecord
from kiln.bundle.card import model_card
from kiln.bundle.load import load_bundle
from kiln.bundle.manifest import EvalRecord, Manifest, SourceRecord
from kiln.bundle.write import write_bundle
from kiln.errors import BuildError, BundleError, TaskError
from kiln.monitor.profile import PROFILE_NAME, make_reference_profile, save_profile
from kiln.optimize.cpu import cpu_info
from kiln.optimize.export import export_onnx
from kiln.optimize.recipes import ExportOnnx, QuantizeDynamic, int8_dynamic_for, int8_dynamic_per_tensor
from kiln.optimize.select import BASELINE, choose
from kiln.report.variants import variants_table
from kiln.runtime.onnx_backend import OnnxBackend
from kiln.runtime.tokenizer import TextTokenizer
from kiln.settings import Settings
from kiln.sources.resolve import ResolvedSource, resolve_source
from kiln.tasks.base import Reference, Runner, Task
from kiln.tasks.classify import ClassifyTask
from kiln.tasks.classify_config import TASK_NAME as CLASSIFY
from kiln.tasks.embed import EmbedTask
from kiln.tasks.embed_config import TASK_NAME as EMBED

REFERENCE = "pytorch-fp32"
TASKS = (EMBED, CLASSIFY)


class BuildOptions(BaseModel):
    model: str | None = Field(default=None, description="folder or hub id; None = the default model")
    task: str = EMBED
    out: Path | None = None
    max_quality_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    eval_samples: int = Field(default=4000, ge=0, description="labelled examples drawn (0 = all)")
    seed: int = 0
    threads: int = 0
    latency_seconds: float = Field(default=3.0, gt=0, description="measuring time per variant and batch size")
    measure_memory: bool = True
    allow_unsafe: tuple[str, ...] = Field(default=(), description="safety finding ids the user accepts")
    data: Path | None = Field(default=None, description="labelled evaluation file (task classify)")
    text_column: str = "text"
    label_column: str = "label"
    slice_by: tuple[str, ...] = Field(
        default=(), description="columns of --data to report accuracy per value"
    )


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


def make_task(opts: BuildOptions) -> Task:
    """The task a build runs, configured from the options."""
    if opts.task == EMBED:
        if opts.data is not None or opts.slice_by:
            raise TaskError(
                "task embed evaluates on the bundled Rotten Tomatoes reviews; --data and --slice-by "
                "are for task classify"
            )
        return EmbedTask()
    if opts.task == CLASSIFY:
        return ClassifyTask(opts.data, opts.text_column, opts.label_column, opts.slice_by)
    raise TaskError(f"task {opts.task!r} is not supported yet; available: {', '.join(TASKS)}")


def build(opts: BuildOptions, console: Console | None = None) -> BuildResult:
    console = console or Console()
    settings = Settings.from_env()
    task = make_task(opts)
    if opts.model is None and task.name != EMBED:
        raise TaskError(f"task {task.name} needs a model: pass the folder of your fine-tuned model")
    source = resolve_source(opts.model)
    model_dir = Path(source.path)
    if not model_dir.is_dir():
        raise TaskError(f"{model_dir} is a single file; task {task.name} needs a Hugging Face model folder")
    task.check_model(model_dir)
    facts = inspect_model(source)
    allowed = refuse_unsafe(facts, allow=opts.allow_unsafe)  # UnsafeFileError names each finding
    if facts.license_verdict is not None and (warning := license_warning(facts.license_verdict)):
        console.print(f"[yellow]warning:[/] {warning}")
    name = bundle_name(source.model_id or source.spec)
    out = Path(opts.out) if opts.out else settings.bundles_dir / name
    settings.home.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=settings.home))
    try:
        run = _BuildRun(opts, console, source, facts, name, out, work, [f.id for f in allowed], task)
        return run.run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class _Candidate:
    record: VariantRecord
    path: Path | None = None
    embedder: Runner | None = None

    @property
    def live(self) -> bool:
        return self.record.status == "ok" and self.embedder is not None

    def fail(self, status: Literal["rejected", "failed"], reason: str) -> None:
        self.record.status, self.record.reason = status, reason


class _BuildRun:
    """One build's state; each stage is a method, run in order under one progress display."""

    def __init__(
        self,
        opts: BuildOptions,
        console: Console,
        source: ResolvedSource,
        facts: ModelFacts,
        name: str,
        out: Path,
        work: Path,
        allowed_findings: list[str],
        task: Task,
    ) -> None:
        self.opts, self.console, self.source, self.facts = opts, console, source, facts
        self.task = task
        self.allowed_findings = allowed_findings
        self.name, self.out, self.work = name, out, work
        self.model_dir = Path(source.path)
        self.max_length = int(min(facts.max_sequence_length or 256, 512))
        self.tok_path = _ensure_tokenizer_json(self.model_dir, work)
        self.tokenizer = TextTokenizer(self.tok_path, self.max_length)
        self.split = task.eval_split(self.model_dir, opts.eval_samples or None, opts.seed)
        self.cpu = cpu_info()
        self.candidates: dict[str, _Candidate] = {}
        self.outputs: dict[str, np.ndarray] = {}

    def _split_summary(self) -> str:
        s = self.split
        if s.fit is not None:
            return f"{len(s.fit)} to fit the probe, {len(s.held_out)} held out"
        ranking = len(s.ranking) if s.ranking is not None else 0
        return f"{len(s.calibration)} calibration, {ranking} ranking, {len(s.held_out)} held out"

    def run(self) -> BuildResult:
        self.console.print(
            f"[bold]kiln build[/] {self.source.spec} → {self.out}\n"
            f"  task {self.task.name}, {self.facts.parameters or '?'} parameters, "
            f"license {self.facts.license}; CPU {self.cpu.summary()}\n"
            f"  held-out evaluation: {self.split.data.name}, {self._split_summary()}"
        )
        with _progress(self.console) as self.progress:
            self.load_reference()
            self.export()
            self.quantize()
            self.parity_gate()
            self.quality()
            self.latency()
            if self.opts.measure_memory:
                self.memory()
        return self.write()

    def _live(self) -> list[_Candidate]:
        return [c for c in self.candidates.values() if c.live]

    def load_reference(self) -> None:
        with _step(self.progress, "load PyTorch fp32 reference"):
            self.reference: Reference = self.task.load_reference(
                self.model_dir, self.tokenizer, self.opts.threads
            )
        record = VariantRecord(
            name=REFERENCE,
            format="pytorch",
            recipe=[{"kind": "reference", "dtype": "fp32", "runtime": "torch"}],
        )
        record.scores.file_bytes = sum(
            (self.model_dir / f).stat().st_size
            for f in self.facts.weight_files
            if (self.model_dir / f).is_file()
        )
        self.candidates[REFERENCE] = _Candidate(record, embedder=self.reference)

    def export(self) -> None:
        self.export_recipe = ExportOnnx()
        path = self.work / f"{BASELINE}.onnx"
        with _step(self.progress, "export ONNX fp32 (dynamo)"):
            example = self.task.example_feed(self.tokenizer)
            export_onnx(self.reference.module, example, path, self.export_recipe, self.task.graph_output)
        record = VariantRecord(name=BASELINE, format="onnx", recipe=[self.export_recipe.model_dump()])
        self.candidates[BASELINE] = _Candidate(record, path=path)

    def quantize(self) -> None:
        recipes: list[tuple[str, QuantizeDynamic]] = [
            ("onnx-int8-dynamic", int8_dynamic_for(self.cpu)),
            ("onnx-int8-dynamic-per-tensor", int8_dynamic_per_tensor()),
        ]
        source = self.candidates[BASELINE].path
        assert source is not None
        with _step(self.progress, "quantize INT8 (dynamic)", total=len(recipes)) as advance:
            for name, recipe in recipes:
                path = self.work / f"{name}.onnx"
                record = VariantRecord(
                    name=name, format="onnx", recipe=[self.export_recipe.model_dump(), recipe.model_dump()]
                )
                candidate = _Candidate(record, path=path)
                self.candidates[name] = candidate
                try:
                    recipe.apply(source, path)
                except BuildError as exc:
                    candidate.fail("failed", str(exc))
                advance(1)

    def parity_gate(self) -> None:
        feeds = parity_inputs(self.tokenizer, self.task.parity_texts(self.split))
        onnx = [c for c in self.candidates.values() if c.path is not None and c.record.status == "ok"]
        with _step(self.progress, "parity gate vs reference", total=len(onnx)) as advance:
            for c in onnx:
                assert c.path is not None
                c.record.scores.file_bytes = c.path.stat().st_size
                try:
                    embedder = self.task.wrap_onnx(OnnxBackend(c.path, self.opts.threads), self.tokenizer)
                except BundleError as exc:
                    c.fail("failed", str(exc))
                    advance(1)
                    continue
                c.record.parity = check_parity(self.reference.run_encoded, embedder.run_encoded, feeds)
                lossy = any(r.get("precision") == "lossy" for r in c.record.recipe)
                reason = self.task.judge_parity(
                    c.record.parity, "lossy" if lossy else "exact", self.reference, embedder, self.split
                )
                if reason:
                    c.fail("rejected", reason)
                else:
                    c.embedder = embedder
                advance(1)

    def quality(self) -> None:
        texts = self.task.quality_texts(self.split)
        live = self._live()
        outputs: dict[str, np.ndarray] = {}
        verb = "embed" if self.task.name == EMBED else "run"
        with _step(self.progress, f"{verb} held-out data", total=len(live) * len(texts)) as advance:
            for c in live:
                assert c.embedder is not None
                outputs[c.record.name] = c.embedder.embed(texts, batch_size=32, on_batch=advance)
        self.outputs = outputs
        ref = outputs[REFERENCE]
        for c in live:
            c.record.scores.quality = self.task.quality(
                ref, outputs[c.record.name], self.split, self.opts.seed
            )

    def latency(self) -> None:
        held_out = self.split.held_out.texts
        one = [_typical_text(held_out, self.tokenizer)]
        batch = held_out[:32]
        live = self._live()
        for key, inputs in (("batch1", one), ("batch32", batch)):
            fns: dict[str, Callable[[], object]] = {
                c.record.name: partial(c.embedder.embed, inputs, len(inputs)) for c in live if c.embedder
            }
            budget = self.opts.latency_seconds * len(fns)
            with _step(self.progress, f"latency at batch {len(inputs)} (interleaved)"):
                stats = interleaved_latency(
                    fns, batch_size=len(inputs), min_time_s=budget, max_time_s=max(4 * budget, 10.0)
                )
            for name, st in stats.items():
                self.candidates[name].record.scores.latency[key] = st

    def memory(self) -> None:
        live = self._live()
        with _step(self.progress, "peak memory (fresh process each)", total=len(live)) as advance:
            for c in live:
                is_ref = c.record.name == REFERENCE
                try:
                    c.record.scores.peak_rss_mb = peak_rss_mb(
                        self.task.memory_probe if is_ref else "onnx",
                        str(self.model_dir if is_ref else c.path),
                        str(self.tok_path),
                        threads=self.opts.threads,
                    )
                except BuildError as exc:
                    self.console.print(f"[yellow]memory of {c.record.name} not measured: {exc}")
                advance(1)

    def reference_profile(self, chosen: str) -> Path | None:
        """What the held-out data looked like through the shipped variant, for drift monitoring.

        The chosen variant's outputs, not the reference's: live traffic runs the shipped artifact, and an
        INT8 model's outputs differ from fp32 systematically.
        """
        held = self.split.held_out
        rows = self.outputs.get(chosen)
        if rows is None or len(held) < 20:
            return None
        rows = rows[-len(held) :]  # every task's quality texts end with the held-out split
        if self.task.name == EMBED:
            embeddings, scores = rows, None
        else:
            shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
            embeddings, scores = None, shifted / shifted.sum(axis=1, keepdims=True)
        profile = make_reference_profile(
            held.texts,
            self.tokenizer.count_tokens(held.texts),
            embeddings,
            labels=held.labels,
            scores=scores,
            seed=self.opts.seed,
        )
        return save_profile(profile, self.work / PROFILE_NAME)

    def write(self) -> BuildResult:
        variants = [c.record for c in self.candidates.values()]
        choice = choose(variants, self.opts.max_quality_drop, REFERENCE)
        for v in variants:
            v.file = "model.onnx" if v.name == choice.name else None
        config = self.task.serving_config(self.reference, self.max_length)
        manifest = Manifest(
            kiln_version=__version__,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            model_name=self.name,
            task=self.task.name,
            task_config=config.model_dump(),
            license=self.facts.license,
            license_verdict=self.facts.license_verdict.model_dump() if self.facts.license_verdict else None,
            allowed_findings=self.allowed_findings,
            source=SourceRecord(
                kind=self.source.kind,
                spec=self.source.spec,
                path=str(self.model_dir),
                revision=self.source.revision,
            ),
            machine=_machine(self.cpu.summary()),
            evaluation=EvalRecord(
                dataset=self.split.data.name,
                seed=self.opts.seed,
                n_train=self.split.n_train,
                n_test=len(self.split.held_out),
                notes=self.split.notes,
            ),
            budget={"max_quality_drop": self.opts.max_quality_drop, "metric": self.task.quality_metric},
            variants=variants,
            chosen=choice.name,
            chosen_reason=choice.reason,
            artifact="model.onnx",
        )
        chosen_path = self.candidates[choice.name].path
        assert chosen_path is not None
        files = {"model.onnx": chosen_path, "tokenizer.json": self.tok_path}
        profile = self.reference_profile(choice.name)
        if profile is not None:
            files[PROFILE_NAME] = profile
        write_bundle(
            self.out,
            manifest,
            files=files,
            texts={"README.md": model_card(manifest)},
        )
        final = load_bundle(self.out).manifest
        self.console.print(variants_table(final.variants, final.chosen))
        for v in final.variants:
            if v.reason:
                self.console.print(f"  [red]{v.name}[/]: {v.reason}")
        self.console.print(f"[bold]chosen:[/] {final.chosen} — {final.chosen_reason}")
        return BuildResult(bundle_dir=self.out, manifest=final)


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
