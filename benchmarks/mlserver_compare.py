"""``kiln serve`` against MLServer serving the same ONNX model, with the same client, on this machine.

    .venv/bin/python benchmarks/mlserver_compare.py [BUNDLE] [--seconds 8] [--mlserver-venv DIR]

BUNDLE defaults to the cached default bundle under KILN_HOME (build it with ``kiln run --no-serve``).

MLServer lives in its own virtual environment, made by this script when it is missing (default
``KILN_HOME/bench/mlserver-venv``: ``mlserver==1.7.1``, ``uvloop<0.22``, ``onnxruntime``, ``tokenizers``,
``numpy``); it never touches kiln's. PyPI has no ONNX Runtime runtime for MLServer, so the script writes a
small custom one in a temporary folder (``kiln_onnx_runtime.py``: MLServer's ``MLModel`` contract,
``load`` / ``predict``) that runs the bundle's own ``model.onnx`` with onnxruntime on the bundle's
``tokenizer.json`` (same max length, padding per batch) and the bundle's ONNX Runtime session settings
(the same computation as kiln serve), and serves it with MLServer's adaptive batching on, at kiln's knobs
(at most KILN_MAX_BATCH_SIZE texts, KILN_MAX_WAIT_MS), and its default parallel inference worker.

Each server starts alone (cold start); then both stay up, both embed the same texts and the answers are
compared (they must agree), and they are driven in turn, never at once, over loopback by the same asyncio
client (``serve_throughput.drive``: POST /v2/models/{m}/infer, JSON BYTES tensor, one text per request,
closed loop; ``--client lean``, the default, sends pre-encoded HTTP/1.1 like wrk, ``--client httpx`` uses
httpx, which takes more CPU from both servers) at concurrency 1 and 32, in ``--rounds`` alternating
rounds (medians reported: on a shared machine the background load drifts, and neighbouring rounds see
about the same). Prints throughput, the ratio (bar: kiln ≥ 2x MLServer at concurrency 32) and p50/p99
latencies (bar: kiln's p99 no worse), and the ceiling: the bundle's raw batched ONNX Runtime throughput in
process (no server of this bundle can pass it, so raw / MLServer is the best ratio any server could
reach on this machine). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lean_client import Phase  # noqa: E402
from serve_throughput import drive, free_port, raw_ort, texts_pool  # noqa: E402

from kiln.bundle.load import load_bundle  # noqa: E402
from kiln.default_job import default_bundle_dir  # noqa: E402
from kiln.serve.models import embed_config  # noqa: E402
from kiln.settings import Settings  # noqa: E402

MLSERVER_VERSION = "1.7.1"
UVLOOP = "uvloop<0.22"
"""MLServer 1.7.1's inference workers die at start with uvloop 0.22 ("There is no current event loop in
thread 'MainThread'", MLServer issue #2286, unfixed in a release): keep the last uvloop it works with."""
KILN = [sys.executable, "-m", "kiln.cli"]

RUNTIME = '''"""MLServer runtime for a kiln bundle's ONNX embedder (from benchmarks/mlserver_compare.py)."""

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class KilnOnnxRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra
        tok = Tokenizer.from_file(extra["tokenizer"])
        pad = tok.padding
        tok.no_padding()
        tok.enable_padding(
            pad_id=int(pad["pad_id"]) if pad else 0, pad_token=str(pad["pad_token"]) if pad else "[PAD]"
        )
        tok.enable_truncation(max_length=int(extra["max_length"]))
        self.tok = tok
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(extra["threads"])
        self.session = ort.InferenceSession(
            extra["model"],
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(extra["disabled_optimizers"]) or None,
        )
        self.feed_names = {i.name for i in self.session.get_inputs()}  # MLModel.inputs is taken
        self.output_name = extra["output"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = StringCodec.decode_input(payload.inputs[0])
        encs = self.tok.encode_batch(list(texts))
        feed = {
            "input_ids": np.asarray([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.asarray([e.type_ids for e in encs], dtype=np.int64),
        }
        feed = {k: v for k, v in feed.items() if k in self.feed_names}
        rows = np.asarray(self.session.run(None, feed)[0], dtype=np.float32)  # the graph's one output
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(name=self.output_name, payload=rows)]
        )
'''


def ensure_mlserver(venv: Path, console: Console) -> Path:
    """The ``mlserver`` executable of ``venv``, creating the venv and installing MLServer if needed."""
    exe = venv / "bin" / "mlserver"
    if exe.is_file():
        return exe
    console.print(f"installing MLServer {MLSERVER_VERSION} into {venv} (once; a few minutes) ...")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    packages = [f"mlserver=={MLSERVER_VERSION}", UVLOOP, "onnxruntime", "tokenizers", "numpy"]
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *packages], check=True)
    if not exe.is_file():
        sys.exit(f"MLServer was installed into {venv}, but {exe} is missing")
    return exe


def write_model_folder(folder: Path, bundle_dir: Path, settings: Settings) -> tuple[str, int]:
    """MLServer's settings.json, model-settings.json and the runtime; returns (model name, http port)."""
    bundle = load_bundle(bundle_dir)
    config = embed_config(bundle)
    name = bundle.manifest.model_name
    http_port = free_port()
    (folder / "kiln_onnx_runtime.py").write_text(RUNTIME)
    server_settings = {
        "http_port": http_port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(server_settings))
    model_settings = {
        "name": name,
        "implementation": "kiln_onnx_runtime.KilnOnnxRuntime",
        "max_batch_size": settings.max_batch_size,
        "max_batch_time": settings.max_wait_ms / 1000,
        "parameters": {
            "extra": {
                "model": str(bundle.artifact_path.resolve()),
                "tokenizer": str(bundle.tokenizer_path.resolve()),
                "max_length": config.max_length,
                "output": config.output_name,
                "threads": settings.threads,
                # the session settings the bundle was measured with (kiln serve applies them too): the
                # same computation, so the answers agree and only the serving stacks differ
                "disabled_optimizers": list(bundle.manifest.runtime.disabled_optimizers),
            }
        },
    }
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    return name, http_port


def wait_ready(
    url: str, model: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 180
) -> float:
    """Seconds until ``url``'s /v2/models/{model}/ready answers 200."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/v2/models/{model}/ready", timeout=1).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    sys.exit(f"{what} was not ready after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def embed_once(url: str, model: str, texts: list[str]) -> np.ndarray:
    """Each text in its own request, one after the other: a batch of one in both servers. (Dynamic
    INT8 quantizes activations with one scale per batch, padding included, so the same text in batches
    made differently — kiln batches by length, MLServer by arrival — differs by up to ~3e-2.)"""
    rows = []
    for text in texts:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        r = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
        if r.status_code != 200:
            sys.exit(f"{url}: infer answered {r.status_code}: {r.text[:500]}")
        out = r.json()["outputs"][0]
        rows.append(np.asarray(out["data"], dtype=np.float32).reshape(out["shape"]))
    return np.concatenate(rows)


def measure(
    url: str,
    model: str,
    concurrency: int,
    seconds: float,
    max_requests: int,
    console: Console,
    client: str = "lean",
) -> tuple[Phase, Phase]:
    console.print("  concurrency 1 ...")
    c1 = asyncio.run(drive(url, model, 1, 1, seconds, max_requests, client))
    console.print(f"  concurrency {concurrency} ...")
    cn = asyncio.run(drive(url, model, concurrency, 1, seconds, max_requests, client))
    return c1, cn


def median_phases(runs: list[tuple[Phase, Phase]]) -> tuple[Phase, Phase]:
    """Per measure, the median over rounds of (concurrency 1, concurrency N) phases; errors summed."""

    def median(phases: list[Phase]) -> Phase:
        cols = np.asarray([p[:3] for p in phases], dtype=np.float64)
        m = np.median(cols, axis=0)
        return float(m[0]), float(m[1]), float(m[2]), sum(p[3] for p in phases)

    return median([r[0] for r in runs]), median([r[1] for r in runs])


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?", default=None)
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per phase")
    ap.add_argument("--max-requests", type=int, default=20_000, help="most requests per phase")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per server (medians reported)")
    ap.add_argument(
        "--client", choices=("lean", "httpx"), default="lean", help="load client (see serve_throughput)"
    )
    ap.add_argument("--mlserver-venv", type=Path, default=None, help="default KILN_HOME/bench/mlserver-venv")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 120))
    settings = Settings.from_env()
    bundle_dir = args.bundle or default_bundle_dir(settings)
    if not (bundle_dir / "kiln.json").is_file():
        sys.exit(f"no bundle at {bundle_dir}: build the default one with `kiln run --no-serve`, or pass one")
    if load_bundle(bundle_dir).manifest.task != "embed":
        sys.exit(f"{bundle_dir} is not an embed bundle: this benchmark compares embedders")
    mlserver = ensure_mlserver(args.mlserver_venv or settings.home / "bench" / "mlserver-venv", console)

    # the ceiling of any server of this bundle: batched ORT in this process, no HTTP
    console.print(f"raw ONNX Runtime in process, batches of {settings.max_batch_size} ...")
    _, raw_tput = raw_ort(bundle_dir, settings, args.seconds)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kiln-mlserver-") as tmp:
        folder = Path(tmp)
        model, ml_port = write_model_folder(folder, bundle_dir, settings)
        probe = texts_pool(8)
        kiln_port = free_port()
        kiln_url = f"http://127.0.0.1:{kiln_port}"
        ml_url = f"http://127.0.0.1:{ml_port}"
        kiln_log, ml_log = folder / "kiln.log", folder / "mlserver.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_ACCESS_LOG": "0"}
        ml_env = {**os.environ, "PYTHONPATH": str(folder), "PYTHONUNBUFFERED": "1"}
        procs: list[subprocess.Popen[bytes]] = []
        try:
            # each server starts alone (cold start), then both stay up, idle while the other is driven
            with open(kiln_log, "wb") as out:
                cmd = [*KILN, "serve", str(bundle_dir), "--host", "127.0.0.1", "--port", str(kiln_port)]
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))
            kiln_cold = wait_ready(kiln_url, model, procs[-1], "kiln serve", kiln_log)
            with open(ml_log, "wb") as out:
                cmd = [str(mlserver), "start", str(folder)]
                procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=ml_env))
            ml_cold = wait_ready(ml_url, model, procs[-1], "MLServer", ml_log)
            kiln_rows = embed_once(kiln_url, model, probe)
            ml_rows = embed_once(ml_url, model, probe)
            # rounds alternate the servers (and which goes first), so that both see the same background
            # load on a shared machine; each round's ratio compares neighbours in time
            runs: dict[str, list[tuple[Phase, Phase]]] = {"kiln": [], "mlserver": []}
            urls = {"kiln": kiln_url, "mlserver": ml_url}
            for r in range(args.rounds):
                for name in ("kiln", "mlserver") if r % 2 == 0 else ("mlserver", "kiln"):
                    console.print(f"round {r + 1}/{args.rounds}: {name}")
                    runs[name].append(
                        measure(
                            urls[name],
                            model,
                            args.concurrency,
                            args.seconds,
                            args.max_requests,
                            console,
                            args.client,
                        )
                    )
        finally:
            for proc in procs:
                stop(proc)
    load_after = os.getloadavg()[0]
    kiln_c1, kiln_cn = median_phases(runs["kiln"])
    ml_c1, ml_cn = median_phases(runs["mlserver"])
    round_ratios = [k[1][0] / m[1][0] for k, m in zip(runs["kiln"], runs["mlserver"], strict=True)]

    diff = float(np.abs(kiln_rows - ml_rows).max())
    table = Table(title=f"kiln serve vs MLServer {MLSERVER_VERSION} — {model} ({bundle_dir})")
    for col in ("measure", "kiln serve", "MLServer", "ratio", "bar", "met"):
        table.add_column(col)

    def phase(p: Phase) -> str:
        return f"{p[0]:.0f} texts/s, p50 {p[1]:.1f} ms, p99 {p[2]:.1f} ms, {p[3]} errors"

    ratio = float(np.median(round_ratios))
    table.add_row(
        f"throughput, concurrency {args.concurrency}",
        phase(kiln_cn),
        phase(ml_cn),
        f"{ratio:.2f}x",
        "≥ 2x",
        "yes" if ratio >= 2 else "[red]NO[/]",
    )
    p99_ok = kiln_cn[2] <= ml_cn[2]
    table.add_row(
        f"p99 latency, concurrency {args.concurrency}",
        f"{kiln_cn[2]:.1f} ms",
        f"{ml_cn[2]:.1f} ms",
        f"{kiln_cn[2] / ml_cn[2]:.2f}x",
        "no worse",
        "yes" if p99_ok else "[red]NO[/]",
    )
    table.add_row(
        f"ceiling: raw ORT in process, batches of {settings.max_batch_size}",
        f"{raw_tput:.0f} texts/s ({kiln_cn[0] / raw_tput:.2f}x of it)",
        f"({ml_cn[0] / raw_tput:.2f}x of it)",
        f"{raw_tput / ml_cn[0]:.2f}x",
        "",
        "",
    )
    table.add_row("concurrency 1", phase(kiln_c1), phase(ml_c1), f"{kiln_c1[0] / ml_c1[0]:.2f}x", "", "")
    table.add_row("cold start (spawn -> ready)", f"{kiln_cold:.2f} s", f"{ml_cold:.2f} s", "", "", "")
    table.add_row(
        "same answers (max |Δ|, 8 texts one at a time)",
        f"{diff:.1e}",
        "",
        "",
        "≤ 1e-4",
        "yes" if diff <= 1e-4 else "[red]NO[/]",
    )
    console.print(table)
    console.print(
        f"medians of {args.rounds} alternating rounds of {args.seconds:g} s per phase; throughput ratio per "
        f"round at concurrency {args.concurrency}: {', '.join(f'{x:.2f}x' for x in round_ratios)}. "
        f"One client process on the same {os.cpu_count()}-core machine as the servers (1-minute load "
        f"average {load_before:.1f} before, {load_after:.1f} after: above {os.cpu_count()}, other work "
        f"shared the CPU). MLServer with adaptive batching (max_batch_size {settings.max_batch_size}, "
        f"max_batch_time {settings.max_wait_ms:g} ms) and its default inference worker; kiln serve with its "
        f"defaults (request log {'on' if settings.monitor else 'off: KILN_MONITOR=0'})."
    )


if __name__ == "__main__":
    main()
