"""``kiln run``: the main job on the embedded default model: build once (cached), show it, serve it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from kiln import __version__
from kiln.bundle.load import Bundle, load_bundle
from kiln.errors import BundleError
from kiln.report.variants import variants_table
from kiln.settings import Settings

DEFAULT_BUNDLE = "all-MiniLM-L6-v2"


def default_bundle_dir(settings: Settings | None = None) -> Path:
    return (settings or Settings.from_env()).bundles_dir / DEFAULT_BUNDLE


def cached_bundle(path: Path, console: Console) -> Bundle | None:
    """The bundle at ``path`` if it is complete, verified and from this kiln version."""
    if not path.exists():
        return None
    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        console.print(f"[yellow]cached bundle at {path} is unusable, rebuilding:[/] {exc}")
        return None
    if bundle.manifest.kiln_version != __version__:
        console.print(f"[yellow]cached bundle was built by kiln {bundle.manifest.kiln_version}; rebuilding")
        return None
    return bundle


def example_calls(host: str, port: int, model: str) -> str:
    base = f"http://{host}:{port}"
    return (
        f"  curl -s {base}/v1/embeddings -H 'content-type: application/json' "
        f'-d \'{{"model": "{model}", "input": ["hello world"]}}\'\n'
        f"  curl -s {base}/v2/models/{model}/infer -H 'content-type: application/json' "
        f'-d \'{{"inputs": [{{"name": "text", "datatype": "BYTES", "shape": [1], '
        f'"data": ["hello world"]}}]}}\''
    )


def run_default(
    serve: bool = True,
    host: str = "127.0.0.1",
    port: int = 8000,
    rebuild: bool = False,
    console: Console | None = None,
    techniques: tuple[str, ...] | None = None,
) -> Path:
    console = console or Console()
    path = default_bundle_dir()
    bundle = None if rebuild else cached_bundle(path, console)
    if bundle is None:
        from kiln.optimize.build import BuildOptions, build
        from kiln.optimize.structural import QUICK

        build(BuildOptions(out=path, techniques=techniques or QUICK), console=console)
        bundle = load_bundle(path)
    else:
        console.print(f"[bold]using cached bundle[/] {path} (kiln run --rebuild to build it again)")
        console.print(variants_table(bundle.manifest.variants, bundle.manifest.chosen))
        console.print(f"[bold]chosen:[/] {bundle.manifest.chosen} — {bundle.manifest.chosen_reason}")
    if not serve:
        return path
    from kiln.serve.server import run_server

    console.print(
        f"[bold green]serving[/] {bundle.manifest.model_name} at http://{host}:{port}  (Ctrl-C stops)"
    )
    console.print("try:\n" + example_calls(host, port, bundle.manifest.model_name), highlight=False)
    run_server(path, host=host, port=port)
    return path
