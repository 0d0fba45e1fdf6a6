"""The `forgetless` command: one entry point for routing, adapters, serving and benchmarks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from benchmarks.cli import app as bench_app
from classifier.cli import app as route_app
from classifier.errors import exit_on_input_error
from deploy.cli import adapters_app, base_app
from gateway.config import load_config

app = typer.Typer(
    help="forgetless: one base model, one LoRA adapter per specialty, each request routed to the one that fits.",
    no_args_is_help=True,
)
app.add_typer(route_app, name="route")
app.add_typer(base_app, name="base")
app.add_typer(adapters_app, name="adapters")
app.add_typer(bench_app, name="bench")


DEMO_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "routes.demo.yaml"


@app.callback()
def main() -> None:
    """forgetless command line."""


@app.command()
@exit_on_input_error
def serve(
    config: Annotated[Path, typer.Option("--config", help="routes.yaml")],
    no_vllm: Annotated[bool, typer.Option("--no-vllm", help="Use a vLLM that is already running (vllm.url/port).")] = False,
):
    """Start vLLM with the base model and adapters, then the gateway; Ctrl-C/SIGTERM stops both."""
    from deploy.serve import serve as run

    run(load_config(config), start_vllm=not no_vllm)


@app.command()
@exit_on_input_error
def demo(config: Annotated[Path, typer.Option("--config", help="routes.yaml of the demo.")] = DEMO_CONFIG):
    """The main job: SmolLM2 + five demo adapters behind the routing gateway at http://127.0.0.1:8000/v1."""
    from deploy.serve import serve as run

    run(load_config(config))


if __name__ == "__main__":
    app()
