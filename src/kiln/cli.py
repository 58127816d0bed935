"""Command line: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from kiln import __version__
from kiln.errors import KilnError

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

    opts = BuildOptions(
        model=args.model,
        task=args.task,
        out=Path(args.out) if args.out else None,
        max_quality_drop=args.max_quality_drop,
        eval_samples=args.eval_samples,
        seed=args.seed,
        allow_unsafe=tuple(args.allow_unsafe),
    )
    result = build(opts, console=console)
    console.print(f"[bold green]bundle written:[/] {result.bundle_dir}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from kiln.serve.server import run_server

    run_server(Path(args.bundle), host=args.host, port=args.port, grpc_port=args.grpc_port)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from kiln.default_job import run_default

    run_default(
        serve=not args.no_serve, host=args.host, port=args.port, rebuild=args.rebuild, console=console
    )
    return 0


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
    pp.add_argument("--runtime", default="torch", help="runtime whose overheads apply (torch, onnxruntime)")
    pp.add_argument("--json", action="store_true", help="print JSON instead of tables")
    pp.set_defaults(func=_cmd_plan)

    pb = sub.add_parser("build", help="optimise, measure and bundle a model")
    pb.add_argument("model", nargs="?", default=None, help="folder or hub id (default: all-MiniLM-L6-v2)")
    pb.add_argument("--task", default="embed", choices=["embed"], help="what the model does")
    pb.add_argument(
        "--max-quality-drop",
        type=float,
        default=0.01,
        help="largest drop of the task's quality metric (absolute, e.g. 0.01 = 1 point) a variant may show",
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

    ps = sub.add_parser("serve", help="serve a bundle over HTTP (Open Inference Protocol v2, OpenAI)")
    ps.add_argument("bundle", help="a bundle directory written by `kiln build`")
    ps.add_argument("--host", default="127.0.0.1")
    ps.add_argument("--port", type=int, default=8000)
    ps.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve Open Inference Protocol v2 over gRPC on this port (default: off)",
    )
    ps.set_defaults(func=_cmd_serve)

    pr = sub.add_parser("run", help="the main job: build the default model (cached) and serve it")
    pr.add_argument("--no-serve", action="store_true", help="build (or reuse) the bundle, then exit")
    pr.add_argument("--rebuild", action="store_true", help="build again even if a cached bundle exists")
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
