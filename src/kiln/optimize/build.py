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
from kiln.bench.parity import check_parity, judge_parity, parity_inputs
from kiln.bench.scores import ParityCheck, Quality, VariantRecord
from kiln.bundle.card import model_card
from kiln.bundle.load import load_bundle
from kiln.bundle.manifest import EvalRecord, Manifest, SourceRecord
from kiln.bundle.write import write_bundle
from kiln.errors import BuildError, BundleError, TaskError
from kiln.monitor.profile import PROFILE_NAME, make_reference_profile, save_profile
from kiln.optimize.calibration import CalibrationReader, encode_calibration
from kiln.optimize.cpu import cpu_info
from kiln.optimize.export import export_onnx
from kiln.optimize.fusion import fuse_transformer, transformer_shape
from kiln.optimize.precision import ConvertPrecision, measure_on_cpu
from kiln.optimize.quant_int4 import QuantizeInt4, int4_for
from kiln.optimize.quant_static import QuantizeStatic, int8_static_for
from kiln.optimize.recipes import ExportOnnx, QuantizeDynamic, int8_dynamic_for, int8_dynamic_per_tensor
from kiln.optimize.search import Budget, SearchTrace, check_target, recipe_summary, screen_failure
from kiln.optimize.select import BASELINE, choose
from kiln.optimize.sensitivity import Scope, exclude_until_passes, rank_sensitivity
from kiln.optimize.structural import (
    TECHNIQUES,
    TRAIN_SECONDS,
    StructuralCandidate,
    read_unlabelled,
    structural_candidates,
    training_texts,
)
from kiln.report.html import render_report
from kiln.report.variants import variants_table
from kiln.runtime.image_preprocess import ImagePreprocessor
from kiln.runtime.onnx_backend import OnnxBackend, SessionSettings
from kiln.runtime.session_tuning import tune_session
from kiln.runtime.tokenizer import TextTokenizer
from kiln.settings import Settings
from kiln.sources.resolve import ResolvedSource, resolve_source
from kiln.tasks.base import EvalSplit, Reference, Runner, Task
from kiln.tasks.classify import ClassifyTask
from kiln.tasks.classify_config import TASK_NAME as CLASSIFY
from kiln.tasks.embed import EmbedTask
from kiln.tasks.embed_config import TASK_NAME as EMBED
from kiln.tasks.embed_torch import INPUT_NAMES
from kiln.tasks.image_classify import (
    IMAGE_TECHNIQUES,
    PREPROCESS_FILE,
    ImageClassifyTask,
    named_source_dir,
)
from kiln.tasks.image_classify_config import TASK_NAME as IMAGE_CLASSIFY

REFERENCE = "pytorch-fp32"
FUSED = "onnx-fused"  # the float export with its attention blocks fused (BERT-class encoders)
TASKS = (EMBED, CLASSIFY, IMAGE_CLASSIFY)
SCREEN_SIZE = 1000  # ranking-screen texts (half fit the probe for embed): cheap, never held out
CALIBRATION_BATCHES = 8  # static quantization: 8 batches of 16 calibration texts
SENSITIVITY_BATCHES = 4
AC_GROUPS_OF = 12  # accuracy control returns 1/12 of the quantized nodes to float per step ...
AC_MAX_GROUPS = 3  # ... for at most 3 steps
EXCLUDABLE = (QuantizeDynamic, QuantizeStatic, QuantizeInt4)


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
    quality_drop_relative: bool = Field(
        default=False,
        description="max_quality_drop is a share of the reference's metric value (--max-quality-drop 2%)",
    )
    max_latency_ms: float | None = Field(default=None, gt=0, description="batch-1 p50 bound")
    max_size_mb: float | None = Field(default=None, gt=0)
    max_memory_mb: float | None = Field(default=None, gt=0)
    max_trials: int | None = Field(default=None, ge=0, description="optional candidates to try")
    time_budget: float | None = Field(
        default=None, gt=0, description="seconds; no new candidate starts after it"
    )
    target: Literal["cpu", "cuda"] = "cpu"
    techniques: tuple[str, ...] = Field(
        default=TECHNIQUES, description="technique families the search tries (see kiln.optimize.structural)"
    )
    unlabelled: Path | None = Field(
        default=None, description="extra unlabelled text for distillation and recovery training"
    )
    train_seconds: float = Field(
        default=TRAIN_SECONDS, gt=0, description="bound of a distillation run (recoveries get less)"
    )

    def budget(self) -> Budget:
        return Budget(
            max_quality_drop=self.max_quality_drop,
            quality_drop_relative=self.quality_drop_relative,
            max_latency_ms=self.max_latency_ms,
            max_size_mb=self.max_size_mb,
            max_memory_mb=self.max_memory_mb,
            max_trials=self.max_trials,
            time_budget_s=self.time_budget,
            target=self.target,
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
    if opts.task == IMAGE_CLASSIFY:
        if opts.model is None:
            raise TaskError(
                "task image-classify needs a model: a folder with an .onnx CNN, or efficientnet-lite0"
            )
        if opts.slice_by:
            raise TaskError("--slice-by is for task classify")
        spec = opts.model
        if (packaged := named_source_dir(spec)) is not None:
            # a named packaged model: its installed folder, scanned and inspected like any other folder
            opts.model = str(packaged)
            if opts.out is None:
                opts.out = Settings.from_env().bundles_dir / bundle_name(spec)
        # the structural recipes (distil, prune, low-rank) are written for transformer stacks and text
        opts.techniques = tuple(t for t in opts.techniques if t in IMAGE_TECHNIQUES)
        return ImageClassifyTask(opts.data)
    raise TaskError(f"task {opts.task!r} is not supported yet; available: {', '.join(TASKS)}")


def build(opts: BuildOptions, console: Console | None = None) -> BuildResult:
    console = console or Console()
    settings = Settings.from_env()
    check_target(opts.target)
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
        self.tok_path: Path | None = None
        if isinstance(task, ImageClassifyTask):  # images: a preprocessor in the tokenizer's role
            self.tokenizer: TextTokenizer = task.preprocessor(self.model_dir)
        else:
            self.tok_path = _ensure_tokenizer_json(self.model_dir, work)
            self.tokenizer = TextTokenizer(self.tok_path, self.max_length)
        self.split = task.eval_split(self.model_dir, opts.eval_samples or None, opts.seed)
        self.cpu = cpu_info()
        self.candidates: dict[str, _Candidate] = {}
        self.outputs: dict[str, np.ndarray] = {}
        self.budget = opts.budget()
        self.max_drop = self.budget.max_quality_drop
        self.trace = SearchTrace()
        self.trials = 0
        self.interrupted: str | None = None
        self._parity_feeds: list[dict[str, np.ndarray]] | None = None
        self._calibration_feeds: list[dict[str, np.ndarray]] | None = None
        self._calibration_readers: dict[str, CalibrationReader] = {}
        self._train_batches: list[Any] | None = None
        self._train_note = ""
        self.screen_drops: dict[str, float] = {}
        self.session = SessionSettings()
        self.shape: tuple[int, int] | None = None  # (heads, hidden) of a BERT-class encoder

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
        stage = "reference"
        try:
            with _progress(self.console) as self.progress:
                self.load_reference()
                self.tune_session()
                self.export()
                self.evaluate_baseline()
                stage = "search"
                self.search()
                stage = "latency"
                self.latency()
                stage = "memory"
                if self.opts.measure_memory:
                    self.memory()
        except KeyboardInterrupt:
            if stage == "reference":
                raise  # onnx-fp32 is not evaluated yet: there is nothing valid to ship
            self.interrupted = f"interrupted (Ctrl-C) during {stage}"
            self._close_interrupted(stage)
            self.console.print(
                f"[yellow]build {self.interrupted}: writing the bundle with the candidates measured so far"
            )
        return self.write()

    def _live(self) -> list[_Candidate]:
        return [c for c in self.candidates.values() if c.live]

    def _close_interrupted(self, stage: str) -> None:
        """After Ctrl-C: every optional candidate not fully measured is set aside, with the reason."""
        for c in self.candidates.values():
            name = c.record.name
            if name in (REFERENCE, BASELINE) or c.record.status != "ok":
                continue
            measured = c.record.scores.quality is not None and c.record.p50("batch1") is not None
            if not measured:
                c.fail("rejected", f"not fully measured: build {self.interrupted}")
                if name in self.trace.entries:
                    self.trace.update(name, outcome="interrupted", reason=f"build {self.interrupted}")
        if stage == "latency":  # interleaved timing: no variant has its numbers
            base = self.candidates[BASELINE].record
            base.scores.latency.clear()

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

    def tune_session(self) -> None:
        """Which of ONNX Runtime's load-time fusions pay on this CPU (for every variant alike)."""
        self.shape = transformer_shape(self.reference.module)
        if self.shape is None:
            return
        with _step(self.progress, "time ONNX Runtime's fused kernels on this CPU"):
            self.session = tune_session(self.shape[1], self.opts.threads)

    def _backend(self, path: Path) -> OnnxBackend:
        """A candidate's session: the bundle's settings, and no spinning, since candidates are timed
        taking turns on the same cores (:func:`~kiln.runtime.onnx_backend.session_options`)."""
        return OnnxBackend(path, self.opts.threads, self.session, spinning=False)

    def export(self) -> None:
        self.export_recipe = ExportOnnx()
        path = self.work / f"{BASELINE}.onnx"
        with _step(self.progress, "export ONNX fp32 (dynamo)"):
            example = self.task.example_feed(self.tokenizer)
            if isinstance(self.task, ImageClassifyTask):  # one NCHW input, batch axis dynamic
                self.task.export(self.reference, example, path, self.export_recipe)
            else:
                export_onnx(self.reference.module, example, path, self.export_recipe, self.task.graph_output)
        record = VariantRecord(name=BASELINE, format="onnx", recipe=[self.export_recipe.model_dump()])
        self.candidates[BASELINE] = _Candidate(record, path=path)

    # -- evaluation of one candidate -------------------------------------------------------------

    def _parity(self, c: _Candidate, parent: str = BASELINE) -> bool:
        """The parity gate for one ONNX candidate made from ``parent``; on success its runner is loaded."""
        if self._parity_feeds is None:
            texts = self.task.parity_texts(self.split)
            if isinstance(self.tokenizer, ImagePreprocessor):
                self._parity_feeds = self.tokenizer.parity_feeds(texts)
            else:
                self._parity_feeds = parity_inputs(self.tokenizer, texts)
        assert c.path is not None
        c.record.scores.file_bytes = c.path.stat().st_size
        try:
            embedder = self.task.wrap_onnx(self._backend(c.path), self.tokenizer)
        except BundleError as exc:
            c.fail("failed", str(exc))
            return False
        lossy = any(r.get("precision") == "lossy" for r in c.record.recipe)
        c.record.parity, reason = self._judge_parity(embedder, parent, "lossy" if lossy else "exact")
        if reason:
            c.fail("rejected", reason)
            return False
        c.embedder = embedder
        return True

    def _judge_parity(
        self, runner: Runner, parent: str, precision: Literal["exact", "lossy"]
    ) -> tuple[list[ParityCheck], str | None]:
        """``runner``'s parity checks and why it fails the gate (None if it passes): against the
        reference, for a graph made from the float export (or a graph exact to it); against the
        parent's float graph for a child of a structural candidate. The task judges both."""
        assert self._parity_feeds is not None
        if parent == BASELINE or self._float_exact(parent):
            checks = check_parity(self.reference.run_encoded, runner.run_encoded, self._parity_feeds)
            return checks, self.task.judge_parity(checks, precision, self.reference, runner, self.split)
        parent_runner = self.candidates[parent].embedder
        assert parent_runner is not None
        checks = check_parity(parent_runner.run_encoded, runner.run_encoded, self._parity_feeds)
        why = self.task.judge_parity(checks, precision, parent_runner, runner, self.split)
        return checks, None if why is None else f"{why} (against {parent})"

    def _float_exact(self, name: str) -> bool:
        """A graph that computes what the float export does (fused, say): judged like the export."""
        return all(step.get("precision") == "exact" for step in self.candidates[name].record.recipe)

    def _held_out(self, c: _Candidate) -> None:
        """Quality on the held-out split (the number the manifest reports)."""
        assert c.embedder is not None
        texts = self.task.quality_texts(self.split)
        verb = "embed" if self.task.name == EMBED else "run"
        with _step(self.progress, f"{verb} held-out data: {c.record.name}", total=len(texts)) as advance:
            self.outputs[c.record.name] = c.embedder.embed(texts, batch_size=32, on_batch=advance)
        c.record.scores.quality = self.task.quality(
            self.outputs[REFERENCE], self.outputs[c.record.name], self.split, self.opts.seed
        )

    def _screen_quality(self, embedder: Runner) -> Quality:
        """Quality on the ranking subset (never the held-out split)."""
        texts = self.task.quality_texts(self.screen_split)
        out = embedder.embed(texts, batch_size=32)
        return self.task.quality(self.screen_reference, out, self.screen_split, self.opts.seed)

    def _make_screen_split(self) -> EvalSplit:
        s = self.split
        if s.ranking is not None and len(s.ranking) >= 20:
            return EvalSplit(data=s.data, held_out=s.ranking, calibration=s.calibration, notes="ranking")
        pool = s.fit if s.fit is not None else s.calibration
        n = min(len(pool), SCREEN_SIZE)
        half = n // 2
        return EvalSplit(
            data=s.data,
            held_out=pool.subset(np.arange(half, n), name=f"{pool.name} (screen)"),
            calibration=s.calibration,
            fit=pool.subset(np.arange(half), name=f"{pool.name} (screen fit)"),
            notes="ranking screen: a slice of the fit split",
        )

    def evaluate_baseline(self) -> None:
        """The reference and its exact ONNX export, fully, before any optional candidate: whatever
        happens later (a budget, Ctrl-C), the build has a valid variant to ship."""
        base = self.candidates[BASELINE]
        ref = self.candidates[REFERENCE]
        summary = recipe_summary(base.record.recipe)
        self.trace.add(REFERENCE, recipe_summary(ref.record.recipe), "reference", "kept")
        self.trace.add(BASELINE, summary, "parity gate", "kept")
        with _step(self.progress, "parity gate: onnx-fp32 vs reference"), self.trace.timed(BASELINE):
            ok = self._parity(base)
        if not ok:
            self.trace.update(BASELINE, outcome=base.record.status, reason=base.record.reason or "")  # type: ignore[arg-type]
            raise BuildError(
                f"the float ONNX export is unusable ({base.record.reason}); nothing can be served"
            )
        texts = self.task.quality_texts(self.split)
        verb = "embed" if self.task.name == EMBED else "run"
        step = _step(self.progress, f"{verb} held-out data: {REFERENCE}", total=len(texts))
        with step as advance, self.trace.timed(REFERENCE):
            self.outputs[REFERENCE] = self.reference.embed(texts, batch_size=32, on_batch=advance)
        ref.record.scores.quality = self.task.quality(
            self.outputs[REFERENCE], self.outputs[REFERENCE], self.split, self.opts.seed
        )
        self.max_drop = self.budget.absolute_drop(ref.record.scores.quality.value)
        with self.trace.timed(BASELINE):
            self._held_out(base)
        self.trace.update(BASELINE, stage="held-out", outcome="kept")
        self.screen_split = self._make_screen_split()
        with _step(self.progress, "reference on the ranking screen"):
            self.screen_reference = self.reference.embed(
                self.task.quality_texts(self.screen_split), batch_size=32
            )

    # -- the search ------------------------------------------------------------------------------

    def _plan(self) -> list[tuple[str, Any, str]]:
        """Graph-level candidates (name, recipe, the candidate it transforms), cheapest first: on the
        float export, then on its fused graph (transformer encoders only)."""
        plan: list[tuple[str, Any, str]] = []
        quantize = "quantize" in self.opts.techniques
        if quantize:
            plan += [
                ("onnx-int8-dynamic", int8_dynamic_for(self.cpu), BASELINE),
                ("onnx-int8-dynamic-per-tensor", int8_dynamic_per_tensor(), BASELINE),
                ("onnx-int8-static", self._static_recipe(), BASELINE),
                ("onnx-int4", int4_for(self.cpu), BASELINE),
            ]
        if "precision" in self.opts.techniques:
            plan.append(
                (
                    "onnx-fp16",
                    ConvertPrecision(dtype="fp16", why="half the bytes; kept on CPU only if faster here"),
                    BASELINE,
                )
            )
        if "fuse" in self.opts.techniques and self.shape is not None:
            plan.append((FUSED, fuse_transformer(self.shape), BASELINE))
            if quantize:
                plan += [
                    (f"{FUSED}-int8-dynamic", int8_dynamic_for(self.cpu), FUSED),
                    (f"{FUSED}-int8-emb4", int8_dynamic_for(self.cpu, embeddings="int4"), FUSED),
                ]
        return plan

    def _static_recipe(self) -> QuantizeStatic:
        """Static INT8 for this task: CNNs quantize activations and clips too (the task's recipe). Text
        models keep their embedding tables float: QDQ on ``Gather`` (S8 activations) broke the MiniLM
        classifier's logits (cosine -0.98 to the reference; accuracy control could not repair it)."""
        if isinstance(self.task, ImageClassifyTask):
            from kiln.tasks.image_classify import int8_static_cnn

            return int8_static_cnn(self.cpu)
        return int8_static_for(self.cpu)

    def _structural_plan(self) -> list[StructuralCandidate]:
        from kiln.optimize.distill import layer_stack

        try:
            depth = len(layer_stack(self.reference.module))
        except BuildError:
            depth = 0  # no stack of repeated layers: no student can be taken from it
        return structural_candidates(
            self.task.name, depth, self.cpu, self.opts.techniques, self.opts.train_seconds, self.shape
        )

    def _stop_reason(self) -> str | None:
        b = self.budget
        if b.max_trials is not None and self.trials >= b.max_trials:
            return f"not tried: --max-trials {b.max_trials} reached"
        if b.time_budget_s is not None and self.trace.elapsed() >= b.time_budget_s:
            return f"not tried: --time-budget {b.time_budget_s:g} s spent ({self.trace.elapsed():.0f} s)"
        return None

    def _calibration(self, source: str = BASELINE) -> CalibrationReader:
        """Calibration batches (never held out) fitted to the inputs of candidate ``source``'s graph."""
        if source not in self._calibration_readers:
            if self._calibration_feeds is None:
                self._calibration_feeds = encode_calibration(
                    self.tokenizer.encode,
                    self.split.calibration.texts,
                    batch_size=16,
                    max_batches=CALIBRATION_BATCHES,
                )
            path = self.candidates[source].path
            assert path is not None
            self._calibration_readers[source] = CalibrationReader.for_model(path, self._calibration_feeds)
        return self._calibration_readers[source]

    def _sensitivity_feeds(self, source: str) -> list[dict[str, np.ndarray]]:
        """Batches of the ranking subset (never held out) that accuracy control ranks nodes on; the
        calibration split when the ranking subset is too small for one batch."""
        texts = self.task.quality_texts(self.screen_split)
        if len(texts) < 16:
            return self._calibration(source).feeds[:SENSITIVITY_BATCHES]
        feeds = encode_calibration(
            self.tokenizer.encode, texts, batch_size=16, max_batches=SENSITIVITY_BATCHES
        )
        path = self.candidates[source].path
        assert path is not None
        return list(CalibrationReader.for_model(path, feeds).feeds)

    def search(self) -> None:
        plan = self._plan()
        structural = self._structural_plan()
        total = len(plan) + sum(1 + len(s.children) for s in structural)
        task = self.progress.add_task("search", total=total)
        for name, recipe, parent in plan:
            self.progress.update(task, description=f"search: {name}")
            self._try_child(name, recipe, parent)
            self.progress.advance(task, 1)
        for candidate in structural:
            self.progress.update(task, description=f"search: {candidate.name}")
            passed = self._try_structural(candidate)
            self.progress.advance(task, 1)
            held_back = None if passed else self._held_back(candidate.name)
            for child, recipe, via in candidate.children:
                self.progress.update(task, description=f"search: {child}")
                self._try_child(child, recipe, via or candidate.name, held_back)
                self.progress.advance(task, 1)
        self.progress.update(task, description="search", completed=total)

    def _held_back(self, name: str) -> str:
        """Why the children of structural candidate ``name`` (which did not pass) are not started."""
        drop = self.screen_drops.get(name)
        if drop is None:
            return f"{name} did not pass its gates"
        return (
            f"{name} is clearly over budget on the ranking screen (drop {drop:+.4f}): quantizing it "
            "would not bring it back"
        )

    def _try_child(self, name: str, recipe: Any, parent: str, held_back: str | None = None) -> None:
        """``recipe`` on ``parent``'s graph, or, when ``held_back`` says why not or the parent is not
        live, a trace entry saying why it was not started."""
        if held_back is None and parent in self.candidates and self.candidates[parent].live:
            self._try(name, recipe, parent=parent)
            return
        before = self.candidates[parent].record.recipe if parent in self.candidates else []
        if held_back is None:
            held_back = f"{parent} did not pass its gates" if before else f"{parent} was not tried"
        summary = recipe_summary([*before, recipe.model_dump()])
        self.trace.add(name, summary, "not started", "skipped", held_back)

    # -- structural candidates (PyTorch-level recipes, then export) ------------------------------

    def _training_batches(self) -> list[Any]:
        """Batches for distillation and recovery: calibration texts (with labels) plus unlabelled text,
        never a held-out or ranking-screen text."""
        if self._train_batches is None:
            from kiln.optimize.torch_recipes import text_batches
            from kiln.tasks.datasets import rotten_tomatoes

            if self.opts.unlabelled is not None:
                extra = read_unlabelled(self.opts.unlabelled, self.opts.text_column)
            else:
                extra = rotten_tomatoes().texts
            calibration = self.split.calibration
            labels = calibration.labels if self.task.name != EMBED else None
            excluded = [*self.split.held_out.texts, *self.task.quality_texts(self.screen_split)]
            texts, kept, unlabelled = training_texts(
                calibration.texts, labels, extra, excluded, self.opts.seed
            )
            batches: list[Any] = []
            if texts:
                batches += text_batches(self.tokenizer, texts, 32, labels=kept)
            if unlabelled:
                batches += text_batches(self.tokenizer, unlabelled, 32)
            order = np.random.default_rng(self.opts.seed).permutation(len(batches))
            self._train_batches = [batches[i] for i in order]
            self._train_note = (
                f"{len(texts)} calibration texts{' with labels' if kept is not None else ''} + "
                f"{len(unlabelled)} unlabelled texts "
                f"({self.opts.unlabelled or 'bundled Rotten Tomatoes reviews'}); held-out and ranking "
                "texts excluded"
            )
        return self._train_batches

    def _try_structural(self, sc: StructuralCandidate) -> bool:
        """Train/transform the reference in PyTorch, export, check the export against the transformed
        module (exact), screen, evaluate. True when it passed (its quantized children are worth trying)."""
        from kiln.optimize.torch_recipes import apply_torch_pipeline, param_count

        steps = [s.model_dump() for s in sc.steps]  # type: ignore[attr-defined]
        recipe = [*steps, self.export_recipe.model_dump()]
        summary = recipe_summary(recipe)
        if (stop := self._stop_reason()) is not None:
            self.trace.add(sc.name, summary, "not started", "skipped", stop)
            return False
        self.trials += 1
        path = self.work / f"{sc.name}.onnx"
        c = _Candidate(VariantRecord(name=sc.name, format="onnx", recipe=recipe), path=path)
        self.candidates[sc.name] = c
        self.trace.add(sc.name, summary, "make", "kept")
        with self.trace.timed(sc.name):
            progress = self.progress.add_task(f"{sc.technique}: {sc.name}", total=1)

            def on_progress(stage: str, done: int, total: int, loss: float) -> None:
                shown = f" loss {loss:.4f}" if loss else ""
                self.progress.update(
                    progress, description=f"{sc.name}: {stage}{shown}", completed=done, total=max(total, 1)
                )

            try:
                data = self._training_batches()
                module = apply_torch_pipeline(self.reference.module, sc.steps, data, on_progress)
                export_onnx(
                    module,
                    self.task.example_feed(self.tokenizer),
                    path,
                    self.export_recipe,
                    self.task.graph_output,
                )
            except Exception as exc:  # an optional candidate that breaks (in training or export) is recorded
                c.fail("failed", f"{sc.technique} failed: {type(exc).__name__}: {exc}")
                self.trace.update(sc.name, outcome="failed", reason=c.record.reason or "")
                return False
            finally:
                self.progress.update(progress, completed=1, total=1)
            before, after = param_count(self.reference.module), param_count(module)
            c.record.recipe[0]["parameters"] = f"{before:,} → {after:,}"
            if sc.technique != "low-rank" or any(s.get("recovery") for s in steps):
                c.record.recipe[0]["training_data"] = self._train_note
            self.trace.update(sc.name, stage="parity gate")
            c.record.scores.file_bytes = path.stat().st_size
            runner = self.task.wrap_onnx(self._backend(path), self.tokenizer)
            assert self._parity_feeds is not None
            c.record.parity = check_parity(
                _ModuleRunner(module).run_encoded, runner.run_encoded, self._parity_feeds
            )
            if (why := judge_parity(c.record.parity, "exact")) is not None:
                c.fail("failed", f"the export of the {sc.technique} result differs from it in PyTorch: {why}")
                self.trace.update(sc.name, outcome="failed", reason=c.record.reason or "")
                return False
            c.embedder = runner
            return self._screen_and_evaluate(c)

    # -- one graph-level candidate ---------------------------------------------------------------

    def _screen_and_evaluate(self, c: _Candidate, screen: Quality | None = None) -> bool:
        """Ranking screen (unless ``screen`` is its result already), then, if not clearly over budget,
        the held-out evaluation. True if the *screen* is not clearly over the budget (the same test
        that lets a candidate reach the held-out split): search decisions (such as trying a structural
        candidate's INT8 children) never look at the held-out split. (A strict "screen drop within the
        budget" turned away a student whose held-out drop was +0.26 pt at a screen drop of +1.05 pt,
        well inside the screen's noise on 765 texts.)"""
        name = c.record.name
        self.trace.update(name, stage="ranking screen")
        assert c.embedder is not None
        if screen is None:
            screen = self._screen_quality(c.embedder)
        self.screen_drops[name] = screen.drop
        if (why := screen_failure(screen, self.max_drop)) is not None:
            c.fail("rejected", why)
            c.embedder = None
            self.trace.update(name, outcome="rejected", reason=why)
            return False
        self.trace.update(name, stage="held-out")
        self._held_out(c)
        q = c.record.scores.quality
        assert q is not None
        verdict = "within" if q.drop <= self.max_drop else "over"
        self.trace.update(
            name,
            outcome="kept",
            reason=f"held-out drop {q.drop:+.4f}, {verdict} the budget {self.max_drop:g}",
        )
        return True

    def _try(
        self,
        name: str,
        recipe: Any,
        prebuilt: Path | None = None,
        seconds: float = 0.0,
        parent: str = BASELINE,
    ) -> None:
        """One candidate: make → parity gate → ranking screen → held-out quality. A quantized candidate
        that fails the parity gate or is over budget on the screen goes to accuracy control.

        ``prebuilt``: the file accuracy control already wrote with this recipe (no second quantization).
        ``parent``: the candidate whose graph the recipe transforms (the float export, or a structural one).
        """
        src = self.candidates[parent].path
        assert src is not None
        steps = [*self.candidates[parent].record.recipe, recipe.model_dump()]
        summary = recipe_summary(steps)
        if prebuilt is None and (stop := self._stop_reason()) is not None:
            self.trace.add(name, summary, "not started", "skipped", stop)
            return
        self.trials += 1
        path = self.work / f"{name}.onnx"
        c = _Candidate(VariantRecord(name=name, format="onnx", recipe=steps), path=path)
        self.candidates[name] = c
        self.trace.add(name, summary, "make", "kept", seconds=round(seconds, 3))
        repairable = prebuilt is None and isinstance(recipe, EXCLUDABLE)
        control = False
        with self.trace.timed(name):
            try:
                if prebuilt is not None:
                    shutil.move(prebuilt, path)
                elif isinstance(recipe, QuantizeStatic):
                    recipe.apply(src, path, self._calibration(parent))
                else:
                    recipe.apply(src, path)
                if isinstance(recipe, QuantizeStatic) and not recipe.calibration_note:
                    note = (
                        f"{self._calibration(parent).samples} texts of the {self.split.calibration.name} "
                        "calibration "
                        f"split (never the held-out split), {CALIBRATION_BATCHES} batches of 16 at most"
                    )
                    c.record.recipe[-1]["calibration_note"] = note
            except BuildError as exc:
                c.fail("failed", str(exc))
                self.trace.update(name, outcome="failed", reason=str(exc))
                return
            if isinstance(recipe, ConvertPrecision) and not self._precision_pays(c, recipe):
                return
            self.trace.update(name, stage="parity gate")
            ok = self._parity(c, parent)
            if not ok:
                # a lossy graph that fails the gate is repaired, not dropped: accuracy control
                control = repairable and c.record.status == "rejected"
                if control:
                    c.record.reason = f"{c.record.reason}; accuracy control follows"
                self.trace.update(name, outcome=c.record.status, reason=c.record.reason or "")  # type: ignore[arg-type]
            elif getattr(recipe, "precision", None) == "exact" and self._inherit_quality(c, parent):
                pass
            else:
                assert c.embedder is not None
                screen = self._screen_quality(c.embedder)
                control = repairable and screen.drop > self.max_drop
                if control:
                    self._reject_for_control(c, screen)
                else:
                    self._screen_and_evaluate(c, screen)
        if control:
            self._accuracy_control(name, recipe, parent)

    def _inherit_quality(self, c: _Candidate, parent: str) -> bool:
        """A float-preserving graph (it passed the exact parity gate against ``parent``) has its
        parent's held-out quality: recorded as such, without a second evaluation."""
        name, source = c.record.name, self.candidates[parent].record.scores.quality
        if source is None or parent not in self.outputs:
            return False
        c.record.scores.quality = source.model_copy(deep=True)
        self.outputs[name] = self.outputs[parent]
        if parent in self.screen_drops:
            self.screen_drops[name] = self.screen_drops[parent]
        worst = max((p.max_abs_diff for p in c.record.parity), default=0.0)
        self.trace.update(
            name,
            outcome="kept",
            reason=f"exact to {parent} (parity max |diff| {worst:.1e}): its held-out quality "
            f"(drop {source.drop:+.4f}) stands, no second evaluation",
        )
        return True

    def _reject_for_control(self, c: _Candidate, screen: Quality) -> None:
        """Over budget on the ranking screen: not evaluated on the held-out split; accuracy control
        follows."""
        why = screen_failure(screen, self.max_drop) or (
            f"ranking screen: quality drop {screen.drop:+.4f} is over the budget {self.max_drop:g}"
        )
        c.fail("rejected", f"{why}; accuracy control follows")
        c.embedder = None
        self.trace.update(c.record.name, stage="ranking screen", outcome="rejected", reason=c.record.reason)

    def _precision_pays(self, c: _Candidate, recipe: ConvertPrecision) -> bool:
        """On a CPU a half-precision graph is kept only if ORT runs it faster here (measured)."""
        assert c.path is not None
        c.record.scores.file_bytes = c.path.stat().st_size
        base = self.candidates[BASELINE].path
        assert base is not None
        texts = self.split.calibration.texts[:4] or [_typical_text(self.split.held_out.texts, self.tokenizer)]
        feeds = [self.tokenizer.encode([t]) for t in texts]
        self.trace.update(c.record.name, stage="speed check")
        decision = measure_on_cpu(recipe, base, c.path, feeds, self.cpu, self.opts.threads, seconds=1.0)
        if decision.run:
            return True
        c.fail("rejected", decision.reason)
        self.trace.update(c.record.name, outcome="rejected", reason=decision.reason)
        return False

    def _float_bytes_left(self, quantized: Path) -> int | None:
        """What ``--max-size-mb`` leaves for float weights next to ``quantized`` (None: no size budget)."""
        if self.opts.max_size_mb is None:
            return None
        return max(0, int(self.opts.max_size_mb * 1e6) - quantized.stat().st_size)

    def _accuracy_control(self, name: str, recipe: Any, parent: str = BASELINE) -> None:
        """Return the most sensitive nodes to float, one group at a time, until the ranking screen
        passes; the result is a new candidate ``<name>-ac`` that then goes through the whole gate."""
        ac_name = f"{name}-ac"
        src = self.candidates[parent].path
        bad = self.candidates[name].path
        assert src is not None and bad is not None
        summary = recipe_summary([*self.candidates[parent].record.recipe, recipe.model_dump()])
        if (stop := self._stop_reason()) is not None:
            self.trace.add(ac_name, summary + " + accuracy control", "not started", "skipped", stop)
            return
        self.trace.add(ac_name, summary + " + accuracy control", "sensitivity", "kept")
        calibration = self._calibration(parent) if isinstance(recipe, QuantizeStatic) else None
        with self.trace.timed(ac_name):
            try:
                feeds = self._sensitivity_feeds(parent)
                # CNNs: a layer's local error says little of what it costs the answer (measured on
                # EfficientNet-Lite0), so each node is judged inside the float model
                scope: Scope = "output" if isinstance(self.task, ImageClassifyTask) else "node"
                ranking = rank_sensitivity(src, bad, feeds, threads=self.opts.threads, scope=scope)
            except (BuildError, Exception) as exc:  # ORT raises plain exceptions on odd cut-outs
                self.trace.update(ac_name, outcome="failed", reason=f"sensitivity ranking failed: {exc}")
                return
            quantized = sum(1 for r in ranking if r.quantized)
            group = max(1, -(-quantized // AC_GROUPS_OF))
            probe = self.work / f"{ac_name}-probe.onnx"

            def passes(path: Path) -> bool:
                # what the repaired graph must pass next: the parity gate and the ranking screen
                try:
                    runner = self.task.wrap_onnx(self._backend(path), self.tokenizer)
                except BundleError:
                    return False
                if self._judge_parity(runner, parent, "lossy")[1] is not None:
                    return False
                return self._screen_quality(runner).drop <= self.max_drop

            self.trace.update(ac_name, stage="accuracy control")
            try:
                result = exclude_until_passes(
                    recipe,
                    src,
                    probe,
                    ranking,
                    passes,
                    group_size=group,
                    max_excluded=group * AC_MAX_GROUPS,
                    calibration=calibration,
                    max_float_bytes=self._float_bytes_left(bad),
                )
            except BuildError as exc:
                self.trace.update(ac_name, outcome="failed", reason=str(exc))
                return
        tried = ", ".join(f"{k} nodes {'passed' if ok else 'failed'}" for k, ok in result.attempts)
        if not result.passed:
            self.trace.update(
                ac_name,
                outcome="rejected",
                reason=f"ranking screen still over budget with up to {group * AC_MAX_GROUPS} of "
                f"{quantized} quantized nodes kept float ({tried})",
            )
            return
        spent = self.trace.entries.pop(ac_name).seconds  # its own entry follows, with the time so far
        why = (
            f"{result.recipe.why}; accuracy control: {len(result.excluded)} most sensitive nodes kept "
            f"float ({tried})"
        )
        assert result.path is not None
        self._try(
            ac_name,
            result.recipe.model_copy(update={"why": why}),
            prebuilt=result.path,
            seconds=spent,
            parent=parent,
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
                    if isinstance(self.task, ImageClassifyTask):
                        ref_file = self.task.reference_file(self.model_dir)
                        c.record.scores.peak_rss_mb = self.task.peak_rss_mb(
                            "reference" if is_ref else "onnx",
                            ref_file if is_ref else Path(str(c.path)),
                            threads=self.opts.threads,
                        )
                        advance(1)
                        continue
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
        choice = choose(variants, self.max_drop, REFERENCE, self.budget)
        if self.interrupted:
            choice = type(choice)(
                choice.name,
                f"{choice.reason} (build {self.interrupted}: only the "
                "candidates measured before it were compared)",
            )
        ref_quality = self.candidates[REFERENCE].record.scores.quality
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
            budget={
                **self.budget.as_manifest(ref_quality.value if ref_quality else None),
                "metric": self.task.quality_metric,
            },
            search_trace=self.trace.as_manifest(),
            variants=variants,
            chosen=choice.name,
            chosen_reason=choice.reason,
            artifact="model.onnx",
            runtime=self.session,
            # images: the input-side file is the preprocessing (also in task_config), not a tokenizer
            tokenizer="tokenizer.json" if self.tok_path is not None else PREPROCESS_FILE,
        )
        # as it will read back from kiln.json (tuples become lists), so `kiln report` renders the same page
        manifest = Manifest.model_validate_json(manifest.model_dump_json())
        chosen_path = self.candidates[choice.name].path
        assert chosen_path is not None
        files = {"model.onnx": chosen_path}
        if self.tok_path is not None:
            files["tokenizer.json"] = self.tok_path
        else:
            files[PREPROCESS_FILE] = self.work / PREPROCESS_FILE
            files[PREPROCESS_FILE].write_text(
                config.model_dump_json(include={"input_name", "input_shape", "input_dtype", "preprocess"}),
                encoding="utf-8",
            )
        # the drift profile describes texts; images have none yet (task_config carries the preprocessing)
        image = isinstance(self.task, ImageClassifyTask)
        profile = None if image else self.reference_profile(choice.name)
        if profile is not None:
            files[PROFILE_NAME] = profile
        write_bundle(
            self.out,
            manifest,
            files=files,
            texts={"README.md": model_card(manifest), "report.html": render_report(manifest)},
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


class _ModuleRunner:
    """A PyTorch module run on encoded feeds, as the exporter called it (for the export's parity check)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def run_encoded(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(feed[name]) for name in INPUT_NAMES))
        return np.asarray(out.float().numpy())
