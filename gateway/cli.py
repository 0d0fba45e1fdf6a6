"""The `forgetless` command: one entry point for routing, adapters, serving and benchmarks."""

from __future__ import annotations

import typer

from classifier.cli import app as route_app

app = typer.Typer(
    help="forgetless: one base model, one LoRA adapter per specialty, each request routed to the one that fits.",
    no_args_is_help=True,
)
app.add_typer(route_app, name="route")


@app.callback()
def main() -> None:
    """forgetless command line."""


if __name__ == "__main__":
    app()
