"""Bars of the end-to-end issue, measured side by side in one run on this machine.

    .venv/bin/python benchmarks/default_model.py [--bundle DIR] [--eval-samples 2000]

Builds (or reuses) the default bundle, then measures against the PyTorch fp32 reference:
batch-1 p50 latency ratio (interleaved runs), file size ratio, probe-accuracy drop and mean cosine on
held-out reviews; time from `kiln run` (cached bundle) to a ready server; the serving process's
resident memory after real traffic. Prints ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kiln.bench.latency import interleaved_latency
from kiln.bench.quality import embed_quality
from kiln.bundle.load import load_bundle
from kiln.default_job import default_bundle_dir, run_default
from kiln.runtime.embedder import OnnxEmbedder
from kiln.runtime.tokenizer import TextTokenizer
from kiln.tasks.datasets import rotten_tomatoes, stratified_split
from kiln.tasks.embed_torch import TorchEmbedder

KILN = str(Path(sys.executable).with_name("kiln"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("server not ready in time")


def post(port: int, path: str, body: dict[str, object]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return float(fields["VmRSS"].split()[0]) / 1024, float(fields["VmHWM"].split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--eval-samples", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0, help="latency measuring time")
    args = ap.parse_args()
    console = Console(width=max(Console().width, 120))

    bundle_dir = args.bundle or run_default(serve=False, console=console)
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    cfg = m.task_config
    tok = TextTokenizer(bundle.tokenizer_path, int(cfg["max_length"]))
    source = Path(m.source.path)
    ref = TorchEmbedder(source, tok)
    chosen = OnnxEmbedder(bundle.backend(), tok)

    data = rotten_tomatoes(max_samples=args.eval_samples, seed=1)  # another sample than the build's
    train, test = stratified_split(data, seed=1)
    texts = train.texts + test.texts
    console.print(f"embedding {len(texts)} held-out reviews with both models ...")
    r_emb, c_emb = ref.embed(texts), chosen.embed(texts)
    n = len(train.texts)
    q = embed_quality(r_emb[:n], r_emb[n:], c_emb[:n], c_emb[n:], train.labels, test.labels, seed=1)

    one = ["The film is a quiet triumph, funny and sad at once."]
    console.print(f"batch-1 latency, interleaved, {args.seconds:.0f} s ...")
    lat = interleaved_latency(
        {"pytorch-fp32": lambda: ref.embed(one), m.chosen: lambda: chosen.embed(one)},
        batch_size=1,
        min_time_s=args.seconds,
        max_time_s=4 * args.seconds,
    )
    speedup = lat["pytorch-fp32"].p50_ms / lat[m.chosen].p50_ms
    ref_bytes = sum(p.stat().st_size for p in source.glob("*.safetensors")) or sum(
        p.stat().st_size for p in source.glob("*.bin")
    )
    size_ratio = ref_bytes / bundle.artifact_path.stat().st_size

    cached_start = None
    if args.bundle is None or args.bundle.resolve() == default_bundle_dir().resolve():
        port = free_port()
        t0 = time.perf_counter()
        run_cmd = [KILN, "run", "--port", str(port)]
        proc = subprocess.Popen(run_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, proc, 300)
            cached_start = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)

    port = free_port()
    srv = subprocess.Popen([KILN, "serve", str(bundle_dir), "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_ready(port, srv, 120)
        for i in range(100):
            post(port, "/v1/embeddings", {"model": m.model_name, "input": texts[i]})
        for i in range(10):
            post(port, "/v1/embeddings", {"model": m.model_name, "input": texts[i * 32 : (i + 1) * 32]})
        rss, hwm = rss_mb(srv.pid)
    finally:
        srv.terminate()
        srv.wait(30)

    table = Table(title=f"default model bars — chosen variant {m.chosen}")
    for col in ("measure", "value", "bar", "met"):
        table.add_column(col)

    def row(name: str, value: str, bar: str, ok: bool) -> None:
        table.add_row(name, value, bar, "yes" if ok else "[red]NO[/]")

    row(
        "batch-1 p50 speedup vs PyTorch fp32",
        f"{speedup:.2f}x ({lat['pytorch-fp32'].p50_ms:.2f} → {lat[m.chosen].p50_ms:.2f} ms)",
        "≥ 2.5x",
        speedup >= 2.5,
    )
    row("file size ratio", f"{size_ratio:.2f}x", "≥ 3.5x", size_ratio >= 3.5)
    row(
        "probe accuracy drop",
        f"{q.drop * 100:+.2f} pt [{q.drop_ci95[0] * 100:+.2f}, {q.drop_ci95[1] * 100:+.2f}]",
        "≤ 1 pt",
        q.drop <= 0.01,
    )
    row("mean cosine to reference", f"{q.extra['mean_cosine']:.4f}", "≥ 0.99", q.extra["mean_cosine"] >= 0.99)
    if cached_start is not None:
        row("kiln run (cached) → ready", f"{cached_start:.1f} s", "< 30 s", cached_start < 30)
    row("serving RSS after traffic (peak)", f"{rss:.0f} MB ({hwm:.0f} MB)", "≤ 400 MB", hwm <= 400)
    console.print(table)
    console.print(
        f"held-out sample: {len(train.texts)} fit / {len(test.texts)} scored (seed 1); "
        f"reference accuracy {q.extra['reference_accuracy']:.4f}; p50 speedups from {lat[m.chosen].runs} "
        "interleaved runs each"
    )


if __name__ == "__main__":
    main()
