"""Throughput of ``kiln serve`` with the request log on against off, on the same bundle, on this machine.

    .venv/bin/python benchmarks/monitor_overhead.py [BUNDLE] [--seconds 8] [--concurrency 32]
        [--sample 0.1] [--monitor-db URL]

BUNDLE defaults to the cached default bundle under KILN_HOME (build it with ``kiln run --no-serve``).
Starts two real servers, one with ``--no-monitor`` and one with the log on (SQLite in a temporary folder
unless --monitor-db; sample --sample), and drives them in turn over loopback (POST /v2/models/{m}/infer,
the closed-loop asyncio client of serve_throughput.py), --rounds times each, alternating (off-on, then
on-off) so that other load on the machine hits both alike. Prints each round's on/off and the median; the
bar is >= 0.95x. Only one server is driven at a time (the idle one costs nothing); asserts nothing.

On a shared machine throughput swings with other people's load far more than by 5%, so each phase also
records the server process's CPU time (user + system, all threads) per text it answered (from its
``kiln_inference_items_total``): a server that is CPU-bound serves ``1 / (CPU per text)``, so the ratio of
CPU per text, off / on, is the throughput ratio with the noise of the neighbours mostly taken out.
First it measures the request log's own cost without a server: CPU per request to submit, summarise and
commit 20,000 events (the --sample share carrying a text and a 384-dimensional embedding) to SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
from serve_throughput import KILN, drive, free_port, wait_ready

from kiln.bundle.load import load_bundle
from kiln.default_job import default_bundle_dir
from kiln.settings import Settings

BAR = 0.95


def start(bundle: Path, flags: list[str]) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KILN_ACCESS_LOG": "0"}
    cmd = [*KILN, "serve", str(bundle), "--host", "127.0.0.1", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_ready(url, proc)
    return url, proc


def writer_cost(db_url: str, sample: float, n: int = 20_000) -> float:
    """CPU milliseconds per request the request log itself spends (submit, summarise, commit)."""
    import time
    from datetime import datetime, timezone

    import numpy as np

    from kiln.monitor.requestlog import RequestEvent, RequestLog
    from kiln.monitor.store import make_engine, migrate

    engine = make_engine(db_url)
    migrate(engine)
    rng = np.random.default_rng(0)
    events = []
    for i in range(n):
        sampled = bool(rng.random() < sample)
        events.append(
            RequestEvent(
                ts=datetime.now(timezone.utc),
                route="/v2/models/m/infer",
                status=200,
                latency_ms=5.0,
                model="m",
                version="1",
                n_inputs=1,
                n_tokens=14,
                sampled=sampled,
                texts=[f"A quiet triumph, funny and sad at once ({i})."] if sampled else (),
                tokens=[14] if sampled else (),
                embeddings=rng.normal(size=(1, 384)).astype(np.float32) if sampled else None,
                request_id=f"req-{i}",
            )
        )
    log = RequestLog(engine, sample=sample)
    t0 = time.process_time()
    log.start()
    for event in events:
        log.submit(event)
    log.flush()
    log.stop()
    took = time.process_time() - t0
    engine.dispose()
    return 1000 * took / n


def served(url: str, pid: int) -> tuple[float, float]:
    """(texts the server ran through its model so far, CPU seconds its process used so far)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    items = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kiln_inference_items_total{")
    )
    cpu = psutil.Process(pid).cpu_times()
    return items, cpu.user + cpu.system


def run(url: str, pid: int, model: str, args: argparse.Namespace) -> tuple[float, float]:
    """(texts/s, CPU milliseconds per text) of one phase."""
    items0, cpu0 = served(url, pid)
    tput, p50, p99, errors = asyncio.run(
        drive(url, model, args.concurrency, 1, args.seconds, args.max_requests)
    )
    items1, cpu1 = served(url, pid)
    if errors:
        print(f"    ({errors} requests were not answered 200)")
    return tput, 1000 * (cpu1 - cpu0) / max(items1 - items0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?", default=None)
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per server")
    ap.add_argument("--max-requests", type=int, default=50_000, help="most requests per phase")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs, alternated; the median ratio counts")
    ap.add_argument("--sample", type=float, default=0.1, help="--monitor-sample for the 'on' run")
    ap.add_argument("--monitor-db", default=None, help="database URL for the 'on' run (default: temp SQLite)")
    args = ap.parse_args()
    bundle = args.bundle or default_bundle_dir(Settings.from_env())
    if not (bundle / "kiln.json").is_file():
        sys.exit(f"no bundle at {bundle}: build the default one with `kiln run --no-serve`, or pass one")
    model = load_bundle(bundle).manifest.model_name
    print(f"request log overhead on {bundle} (model {model}), concurrency {args.concurrency}:")
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.monitor_db:
            cost = writer_cost(f"sqlite:///{Path(tmp) / 'writer.db'}", args.sample)
            print(f"  the request log alone: {cost:.3f} CPU ms per request (sample {args.sample}, SQLite)")
        db = args.monitor_db or f"sqlite:///{Path(tmp) / 'requests.db'}"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            off_url, proc = start(bundle, ["--no-monitor"])
            procs.append(proc)
            on_url, proc = start(bundle, ["--monitor-db", db, "--monitor-sample", str(args.sample)])
            procs.append(proc)
            pids = {off_url: procs[0].pid, on_url: procs[1].pid}
            for url in (off_url, on_url):  # warm-up: connections, sessions, the log's first batches
                asyncio.run(drive(url, model, args.concurrency, 1, 1.0, args.max_requests))
            # alternate the two (one driven at a time) so that other load on the machine hits both alike
            for r in range(args.rounds):
                order = (off_url, on_url) if r % 2 == 0 else (on_url, off_url)
                measured = {url: run(url, pids[url], model, args) for url in order}
                (off, off_cpu), (on, on_cpu) = measured[off_url], measured[on_url]
                ratios.append(on / off if off else float("nan"))
                cpu_ratios.append(off_cpu / on_cpu if on_cpu else float("nan"))
                print(
                    f"  round {r + 1} ({'off, on' if r % 2 == 0 else 'on, off'}): off {off:8.0f} texts/s "
                    f"{off_cpu:6.2f} CPU ms/text, on {on:8.0f} texts/s {on_cpu:6.2f} CPU ms/text; on/off "
                    f"throughput {ratios[-1]:.3f}x, by CPU per text {cpu_ratios[-1]:.3f}x"
                )
            stats = httpx.get(f"{on_url}/v2/monitor/stats", timeout=10).json()
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    ratio = statistics.median(ratios)
    cpu_ratio = statistics.median(cpu_ratios)
    print(f"  log on: {db}, sample {args.sample}; committed {stats['committed']}, dropped {stats['dropped']}")
    verdict = "met" if ratio >= BAR else "NOT met"
    print(
        f"throughput with the request log / without (median of {len(ratios)} rounds): {ratio:.3f}x "
        f"(bar >= {BAR}x: {verdict})"
    )
    print(
        f"CPU per text without the request log / with it (median of {len(cpu_ratios)} rounds): "
        f"{cpu_ratio:.3f}x (bar >= {BAR}x: {'met' if cpu_ratio >= BAR else 'NOT met'}); load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
