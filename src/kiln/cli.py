"""Command line: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from kiln import __version__
from kiln.errors import KilnError
from kiln.settings import Settings

console = Console()
if not console.is_terminal:  # piped or logged: don't squeeze the variant table into 80 columns
    console.width = max(console.width, 160)
err_console = Console(stderr=True)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from kiln.analyze.inspect import inspect_model
    from kiln.analyze.render import facts_table
    from kiln.sources.resolve import resolve_source

    facts = inspect_model(resolve_source(args.model))
    if args.json:
        print(facts.model_dump_json(indent=2))
    else:
        console.print(facts_table(facts))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from kiln.plan.plan import make_plan
    from kiln.plan.render import plan_view

    plan = make_plan(
        args.model,
        dtype=args.dtype,
        batch=args.batch,
        context=args.context,
        targets=args.target,
        catalog_path=Path(args.catalog) if args.catalog else None,
        runtime=args.runtime,
        output_tokens=args.output_tokens,
    )
    if args.json:
        print(plan.model_dump_json(indent=2))
    else:
        console.print(plan_view(plan))
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from kiln.optimize.build import BuildOptions, build
    from kiln.optimize.search import parse_quality_drop
    from kiln.optimize.structural import parse_techniques

    max_drop, relative = parse_quality_drop(args.max_quality_drop)
    opts = BuildOptions(
        model=args.model,
        task=args.task,
        out=Path(args.out) if args.out else None,
        max_quality_drop=max_drop,
        quality_drop_relative=relative,
        max_latency_ms=args.max_latency_ms,
        max_size_mb=args.max_size_mb,
        max_memory_mb=args.max_memory_mb,
        max_trials=args.max_trials,
        time_budget=args.time_budget,
        target=args.target,
        eval_samples=args.eval_samples,
        seed=args.seed,
        allow_unsafe=tuple(args.allow_unsafe),
        data=Path(args.data) if args.data else None,
        text_column=args.text_column,
        label_column=args.label_column,
        slice_by=tuple(args.slice_by),
        techniques=parse_techniques(args.techniques),
        unlabelled=Path(args.unlabelled) if args.unlabelled else None,
        train_seconds=args.train_seconds,
    )
    result = build(opts, console=console)
    console.print(f"[bold green]bundle written:[/] {result.bundle_dir}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from kiln.serve.server import run_server

    run_server(
        [Path(b) for b in args.bundle],
        host=args.host,
        port=args.port,
        grpc_port=args.grpc_port,
        canaries=args.canary,
        settings=_serve_settings(args),
        api_keys=Path(args.api_keys) if args.api_keys else None,
        ssl_certfile=Path(args.ssl_certfile) if args.ssl_certfile else None,
        ssl_keyfile=Path(args.ssl_keyfile) if args.ssl_keyfile else None,
    )
    return 0


def _serve_settings(args: argparse.Namespace) -> Settings:
    """The environment's settings with the request-log flags given on the command line over them."""
    import dataclasses

    settings = Settings.from_env()
    changes: dict[str, object] = {}
    if args.no_monitor:
        changes["monitor"] = False
    if args.monitor_db is not None:
        changes["monitor_db"] = args.monitor_db
    if args.monitor_sample is not None:
        changes["monitor_sample"] = args.monitor_sample
    if args.keep_text:
        changes["monitor_keep_text"] = True
    if args.monitor_retention_days is not None:
        changes["monitor_retention_days"] = args.monitor_retention_days
    if args.text_overflow is not None:
        changes["text_overflow"] = args.text_overflow
    if args.max_text_chars is not None:
        changes["max_text_chars"] = args.max_text_chars
    if args.max_image_pixels is not None:
        changes["max_image_pixels"] = args.max_image_pixels
    if args.api_keys_reload is not None:
        changes["api_keys_reload_s"] = args.api_keys_reload
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw} is not at least 1")
    return value


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{raw} is not a number of seconds >= 0")
    return value


def _fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{raw} is not between 0 and 1")
    return value


def _canary(spec: str) -> object:
    from kiln.serve.repository import parse_canary

    try:
        return parse_canary(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from kiln.default_job import run_default
    from kiln.optimize.structural import parse_techniques

    run_default(
        serve=not args.no_serve,
        host=args.host,
        port=args.port,
        rebuild=args.rebuild,
        console=console,
        techniques=parse_techniques(args.techniques),
    )
    return 0


def _cmd_keys_add(args: argparse.Namespace) -> int:
    from kiln.serve.keys import ROUTE_SCOPES, add_key, parse_scope_list
    from kiln.serve.ratelimit import default_burst, format_rate, parse_rate

    try:
        models = parse_scope_list(args.models, "--models")
        routes = parse_scope_list(args.routes, "--routes", ROUTE_SCOPES)
        rate = parse_rate(args.rate) if args.rate is not None else None
    except ValueError as exc:
        raise KilnError(str(exc)) from None
    if args.burst is not None and rate is None:
        raise KilnError("--burst needs --rate (e.g. --rate 10/s --burst 20)")
    burst = (args.burst or default_burst(rate)) if rate is not None else None
    key, record = add_key(
        Path(args.file), args.id, models=models, routes=routes, admin=args.admin, rate=rate, burst=burst
    )
    limit = f"{format_rate(rate)}, burst {burst}" if rate is not None else "none"
    err_console.print(
        f"added key [bold]{record.id}[/] to {args.file} (models: {', '.join(models)}; routes: "
        f"{', '.join(routes)}; admin: {'yes' if args.admin else 'no'}; rate limit: {limit})",
        highlight=False,
    )
    err_console.print("[yellow]the key is shown this once: kiln stores only a salted hash of it[/]")
    print(key)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from kiln.serve.keys import load_keys
    from kiln.serve.ratelimit import format_rate

    keys = load_keys(Path(args.file))
    table = Table("id", "models", "routes", "admin", "rate", "burst", "created", title=str(args.file))
    for k in keys:
        rate = format_rate(k.rate) if k.rate is not None else "-"
        burst = str(k.burst) if k.burst is not None else "-"
        table.add_row(
            k.id, ",".join(k.models), ",".join(k.routes), "yes" if k.admin else "no", rate, burst, k.created
        )
    console.print(table)
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from kiln.serve.keys import revoke_key

    revoke_key(Path(args.file), args.id)
    err_console.print(
        f"revoked key [bold]{args.id}[/] in {args.file}: running servers stop accepting it within seconds "
        "(they re-read the keys file when it changes, and on SIGHUP)"
    )
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from kiln.monitor.report import load_report, render_html, render_terminal

    settings = Settings.from_env()
    report = load_report(
        args.target,
        args.window,
        args.count,
        bundle=Path(args.bundle) if args.bundle else None,
        model=args.model,
        api_key=args.api_key,
        home=settings.home,
        monitor_db=settings.monitor_db,
    )
    render_terminal(report, console)
    if args.html:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
        err_console.print(f"HTML report written: {args.html}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from kiln.bundle.load import read_manifest
    from kiln.report.html import write_report
    from kiln.report.variants import variants_table

    bundle = Path(args.bundle)
    path = write_report(bundle, Path(args.out) if args.out else None)
    manifest = read_manifest(bundle)
    console.print(variants_table(manifest.variants, manifest.chosen))
    print(path)
    return 0


def _add_monitor_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pm = sub.add_parser("monitor", help="traffic, latency, errors, drift and quality per window")
    pm.add_argument(
        "target",
        help="a server URL (http://127.0.0.1:8000), a bundle folder (its request log under KILN_HOME or "
        "KILN_MONITOR_DB), or a request-log database (sqlite:////path/log.db, a .db file, "
        "postgresql+psycopg://...)",
    )
    pm.add_argument("--window", default="1h", help="window length: 15m, 1h, 1d ... (default 1h)")
    pm.add_argument("--count", type=int, default=24, help="how many windows, newest last (default 24)")
    pm.add_argument(
        "--bundle", default=None, help="with a database: the bundle whose reference profile to use"
    )
    pm.add_argument("--model", default=None, help="only this model's requests (default: all in the log)")
    pm.add_argument("--api-key", default=None, help="with a server URL: a key allowed the metrics routes")
    pm.add_argument(
        "--html", default=None, metavar="FILE", help="also write the report as a self-contained HTML page"
    )
    pm.set_defaults(func=_cmd_monitor)


def _add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pk = sub.add_parser("keys", help="manage the API keys file `kiln serve --api-keys` reads")
    keys = pk.add_subparsers(dest="keys_command", required=True)
    ka = keys.add_parser("add", help="make a random key, print it once, store only its salted hash")
    ka.add_argument("file", help="keys file (.json, or .toml); created if missing")
    ka.add_argument("--id", required=True, help="a name for the key (letters, digits, . _ -)")
    ka.add_argument("--models", default="*", help="comma-separated model names the key may use (default *)")
    ka.add_argument(
        "--routes", default="*", help="comma-separated route groups: infer, metadata, metrics (default *)"
    )
    ka.add_argument("--admin", action="store_true", help="every model and route, the model repository too")
    ka.add_argument("--rate", default=None, help="rate limit, e.g. 10/s, 600/m, 1000/h (default: none)")
    ka.add_argument("--burst", type=int, default=None, help="requests allowed at once (default: 1s of rate)")
    ka.set_defaults(func=_cmd_keys_add)
    kl = keys.add_parser("list", help="the keys in a file: ids, scopes and limits (never the keys)")
    kl.add_argument("file")
    kl.set_defaults(func=_cmd_keys_list)
    kr = keys.add_parser("revoke", help="remove a key from the file")
    kr.add_argument("file")
    kr.add_argument("id")
    kr.set_defaults(func=_cmd_keys_revoke)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description="Inspect, optimise, bundle and serve a model.")
    p.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("inspect", help="facts about a model: format, size, parameters, license")
    pi.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a local folder or file, or a hub id from the local cache (default: all-MiniLM-L6-v2)",
    )
    pi.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pi.set_defaults(func=_cmd_inspect)

    pp = sub.add_parser("plan", help="memory, devices, throughput and cost estimates per hardware target")
    pp.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a folder, a cached hub id, a GGUF file or a config.json alone (default: all-MiniLM-L6-v2)",
    )
    pp.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16", "fp16", "fp8", "int8", "int4"],
        help="weight dtype to plan for (default: as stored in the weight files, else bf16)",
    )
    pp.add_argument("--batch", type=int, default=1, help="sequences served at once (default 1)")
    pp.add_argument(
        "--context", type=int, default=None, help="tokens per sequence (default: 4096 decoders, 128 encoders)"
    )
    pp.add_argument(
        "--output-tokens", type=int, default=None, help="generated tokens per request (decoders; default 256)"
    )
    pp.add_argument(
        "--target", nargs="+", default=None, help="catalog targets to plan for (default: all of them)"
    )
    pp.add_argument("--catalog", default=None, help="a .json/.toml catalog merged over the shipped one")
    pp.add_argument(
        "--runtime",
        default=None,
        help="runtime whose overheads apply: torch, torch-nn, onnxruntime "
        "(default: torch-nn for CNNs, torch otherwise)",
    )
    pp.add_argument("--json", action="store_true", help="print JSON instead of tables")
    pp.set_defaults(func=_cmd_plan)

    pb = sub.add_parser("build", help="optimise, measure and bundle a model")
    pb.add_argument("model", nargs="?", default=None, help="folder or hub id (default: all-MiniLM-L6-v2)")
    pb.add_argument(
        "--task",
        default="embed",
        choices=["embed", "classify", "image-classify"],
        help="what the model does: embed (sentence embeddings), classify (a fine-tuned text classifier) "
        "or image-classify (a CNN: a folder with an .onnx, or efficientnet-lite0)",
    )
    pb.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="labelled evaluation data: for --task classify a CSV, TSV, JSONL or Parquet with a text and a "
        "label column (labels must be classes of the model's config id2label); for --task image-classify "
        "a folder of images, one sub-folder per label",
    )
    pb.add_argument("--text-column", default="text", help="column of --data holding the text (default text)")
    pb.add_argument(
        "--label-column", default="label", help="column of --data holding the label (default label)"
    )
    pb.add_argument(
        "--slice-by",
        action="append",
        default=[],
        metavar="COL",
        help="also report accuracy per value of this column of --data (length buckets always); repeatable",
    )
    pb.add_argument(
        "--max-quality-drop",
        default="0.01",
        metavar="DROP",
        help="largest drop of the task's quality metric a variant may show: absolute (0.01 = 1 point) or, "
        "with %%, relative to the reference's value (2%% of 0.80 = 0.016)",
    )
    pb.add_argument(
        "--max-latency-ms", type=float, default=None, help="largest batch-1 p50 latency (ms) of the choice"
    )
    pb.add_argument("--max-size-mb", type=float, default=None, help="largest model file (MB) of the choice")
    pb.add_argument(
        "--max-memory-mb", type=float, default=None, help="largest peak memory (MB) of the choice"
    )
    pb.add_argument("--max-trials", type=int, default=None, help="optional candidates to try (default all)")
    pb.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no new candidate after this many seconds; what was measured is kept",
    )
    pb.add_argument(
        "--target",
        default="cpu",
        choices=["cpu", "cuda"],
        help="device the bundle runs on (cuda needs onnxruntime's CUDAExecutionProvider)",
    )
    pb.add_argument(
        "--techniques",
        default="all",
        metavar="LIST",
        help="technique families the search tries, comma-separated: quantize, precision, fuse, distill, "
        "prune, low-rank; or all (default), or quick (quantize,precision,fuse: no training runs)",
    )
    pb.add_argument(
        "--unlabelled",
        default=None,
        metavar="FILE",
        help="unlabelled text for distillation and recovery training (.txt one per line, or the "
        "--text-column of a CSV/JSONL/Parquet); default: kiln's bundled movie reviews",
    )
    pb.add_argument(
        "--train-seconds",
        type=float,
        default=240.0,
        metavar="SECONDS",
        help="bound of each distillation run (pruning and low-rank recovery get less; default 240)",
    )
    pb.add_argument("--out", default=None, help="bundle directory (default: under KILN_HOME)")
    pb.add_argument(
        "--eval-samples",
        type=int,
        default=4000,
        help="labelled examples drawn for the held-out evaluation (0 = all)",
    )
    pb.add_argument("--seed", type=int, default=0, help="seed for sampling and splits")
    pb.add_argument(
        "--allow-unsafe",
        action="append",
        default=[],
        metavar="FINDING_ID",
        help="load the model despite this safety finding (the id `kiln inspect` prints); repeat per finding",
    )
    pb.set_defaults(func=_cmd_build)

    ps = sub.add_parser("serve", help="serve bundles over HTTP (Open Inference Protocol v2, OpenAI)")
    ps.add_argument(
        "bundle",
        nargs="+",
        help="a bundle directory written by `kiln build`, a model folder of numbered versions "
        "(name/1/, name/2/), or a repository folder of those; give several to serve several models",
    )
    ps.add_argument(
        "--canary",
        action="append",
        default=[],
        type=_canary,
        metavar="NAME=VERSION:PERCENT",
        help="send PERCENT %% of NAME's unversioned requests to VERSION, the rest to its highest other "
        "version (both are loaded); repeat per model",
    )
    ps.add_argument("--host", default="127.0.0.1")
    ps.add_argument("--port", type=int, default=8000)
    ps.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve Open Inference Protocol v2 over gRPC on this port (default: off)",
    )
    pm = ps.add_argument_group("request log (kiln.monitor)")
    pm.add_argument(
        "--no-monitor", action="store_true", help="keep no request log (default: on; KILN_MONITOR=0)"
    )
    pm.add_argument(
        "--monitor-db",
        default=None,
        metavar="URL",
        help="request log database, e.g. postgresql+psycopg://user@host:5432/db "
        "(default: SQLite at KILN_HOME/monitor/<model>.db; KILN_MONITOR_DB)",
    )
    pm.add_argument(
        "--monitor-sample",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="fraction of requests whose inputs and outputs are summarised, 0..1 "
        "(default 0.1; KILN_MONITOR_SAMPLE)",
    )
    pm.add_argument(
        "--keep-text",
        action="store_true",
        help="store sampled texts verbatim (default: only their sha256 and length; KILN_MONITOR_KEEP_TEXT)",
    )
    pm.add_argument(
        "--monitor-retention-days",
        type=int,
        default=None,
        metavar="DAYS",
        help="delete request-log rows older than DAYS (0: keep all, default 30; KILN_MONITOR_RETENTION_DAYS)",
    )
    pl = ps.add_argument_group("limits")
    pl.add_argument(
        "--text-overflow",
        choices=["truncate", "reject"],
        default=None,
        help="a text of more tokens than the model's max length: truncate it to that length (default) "
        "or reject the request with 400 (KILN_TEXT_OVERFLOW)",
    )
    pl.add_argument(
        "--max-text-chars",
        type=_positive_int,
        default=None,
        metavar="N",
        help="refuse (400) a text of more than N characters (default 100000; KILN_MAX_TEXT_CHARS)",
    )
    pl.add_argument(
        "--max-image-pixels",
        type=_positive_int,
        default=None,
        metavar="N",
        help="image models: refuse (413) an image of more than N pixels (width x height) before decoding "
        "it (default 25000000; KILN_MAX_IMAGE_PIXELS)",
    )
    pa = ps.add_argument_group("security")
    pa.add_argument(
        "--api-keys",
        default=None,
        metavar="FILE",
        help="API keys file (`kiln keys add`): every route but health then needs a key (KILN_API_KEYS); "
        "the server reloads it when it changes and on SIGHUP",
    )
    pa.add_argument(
        "--api-keys-reload",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how often to check the API keys file for changes (default 2; 0: only on SIGHUP; "
        "KILN_API_KEYS_RELOAD_S)",
    )
    pa.add_argument("--ssl-certfile", default=None, metavar="PEM", help="serve HTTPS (and gRPC TLS)")
    pa.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="the certificate's private key")
    ps.set_defaults(func=_cmd_serve)

    _add_keys_parser(sub)
    _add_monitor_parser(sub)

    prep = sub.add_parser("report", help="the build report of a bundle: variants, Pareto plots, trace (HTML)")
    prep.add_argument("bundle", help="a bundle directory written by `kiln build`")
    prep.add_argument(
        "--out", default=None, metavar="FILE", help="where to write the HTML (default: BUNDLE/report.html)"
    )
    prep.set_defaults(func=_cmd_report)

    pr = sub.add_parser("run", help="the main job: build the default model (cached) and serve it")
    pr.add_argument("--no-serve", action="store_true", help="build (or reuse) the bundle, then exit")
    pr.add_argument("--rebuild", action="store_true", help="build again even if a cached bundle exists")
    pr.add_argument(
        "--techniques",
        default="quick",
        metavar="LIST",
        help="search of a new build: quick (default: quantization and precision, no training runs, a few "
        "minutes), all (adds distillation, pruning and low-rank: longer), or a comma-separated list",
    )
    pr.add_argument("--host", default="127.0.0.1")
    pr.add_argument("--port", type=int, default=8000)
    pr.set_defaults(func=_cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KilnError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
