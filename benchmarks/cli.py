"""`forgetless bench ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from classifier.errors import InputError, exit_on_input_error

app = typer.Typer(help="Reproducible benchmarks; results go to benchmarks/results/.", no_args_is_help=True)


@app.command()
@exit_on_input_error
def routing(
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Labelled JSONL (repeatable). Default: ../shared/data/routing/dev.jsonl")] = None,
    fallback: Annotated[str, typer.Option("--fallback")] = "general",
    out: Annotated[Optional[Path], typer.Option("--out", help="Results directory.")] = None,
):
    """Routers compared on held-out source families: accuracy, macro-F1, fallback P/R, ECE, latency."""
    from benchmarks.routing import DEV, RESULTS, run

    files = data or [DEV]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: no such file")
    report = run(files, fallback, out or RESULTS)
    for name, m in report["methods"].items():
        typer.echo(f"{name:24s} macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}  "
                   f"fallback P/R {m['fallback_precision']:.2f}/{m['fallback_recall']:.2f}  p50 {m['p50_ms']:.2f} ms")
    typer.echo(f"wrote {(out or RESULTS) / 'routing.md'}")


@app.command()
@exit_on_input_error
def overhead(
    config: Annotated[Path, typer.Option("--config", help="routes.yaml to serve (default: the demo).")] = Path("deploy/routes.demo.yaml"),
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 32,
    waves: Annotated[int, typer.Option("--waves", min=1)] = 4,
    out: Annotated[Optional[Path], typer.Option("--out")] = None,
):
    """Latency the gateway adds in front of real vLLM, and its requests/s in front of an instant upstream."""
    from benchmarks.overhead import RESULTS, run

    r = run(config, concurrency=concurrency, waves=waves, out_dir=out or RESULTS)
    typer.echo(f"added p50 {r['added_p50_ms']:.1f} ms, p99 {r['added_p99_ms']:.1f} ms at {r['concurrency']} streams; "
               f"gateway {r['gateway_rps']:.0f} req/s vs instant upstream")
