"""The `forgetless` command: one entry point for routing, adapters, serving and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from benchmarks.cli import app as bench_app
from classifier.cli import app as route_app
from classifier.errors import InputError, check_output_dir, exit_on_input_error
from deploy.audit import SURE_COST
from deploy.cli import adapters_app, base_app
from gateway.config import load_config
from gateway.routing_table import SURE_MIN

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


@app.command()
@exit_on_input_error
def audit(
    config: Annotated[Path, typer.Option("--config", help="routes.yaml naming the base and adapters.")],
    eval_dir: Annotated[Path, typer.Option("--eval", help="Directory with <route>/eval.jsonl and general/eval.jsonl.")],
    out: Annotated[Path, typer.Option("--out", help="Where audit.json/.md/.png go.")] = Path("audit"),
    limit: Annotated[int, typer.Option("--limit", min=1, help="Items per eval set.")] = 20,
    task_limit: Annotated[int, typer.Option("--task-items", min=0, help=(
        "Checkable items per eval set answered greedily for task metrics (math final number, code tests); 0 = off."))] = 8,
    forgetting_limit: Annotated[float, typer.Option("--forgetting-limit", min=0.0, help="Max relative general NLL loss.")] = 0.05,
    switch_margin: Annotated[float, typer.Option("--switch-margin", min=0.0, help=(
        "Another model takes a route from its own adapter (or the base) only if better by more than this relative NLL."))] = 0.02,
    sure_min: Annotated[Optional[float], typer.Option("--sure-min", min=0.5, max=1.0, help=(
        "A flagged adapter that clearly wins its own route serves it when the router's probability is at least this. "
        f"Default: per route, the lowest probability keeping the expected loss on every other eval set within "
        f"--sure-cost, fitted on the router's probabilities for the eval prompts ({SURE_MIN:g} when no router is "
        f"trained yet)."))] = None,
    sure_cost: Annotated[float, typer.Option("--sure-cost", min=0.0, max=1.0, help=(
        "Expected relative NLL loss the sure-only adapters together may cost any other eval set (per-route thresholds; with "
        "--candidate, the re-check of the other routes' thresholds after adoption)."))] = SURE_COST,
    sure_routes: Annotated[bool, typer.Option("--sure-routes/--no-sure-routes", help=(
        "--no-sure-routes: flagged adapters never serve (the base takes their routes)."))] = True,
    url: Annotated[Optional[str], typer.Option("--url", help="Score on a running vLLM instead of starting one.")] = None,
    candidate: Annotated[Optional[str], typer.Option(
        "--candidate", help="NAME=PATH: load a new adapter into the running vLLM and adopt it only if it wins.")] = None,
    route: Annotated[Optional[str], typer.Option("--route", help="The candidate's route (default: its NAME).")] = None,
    gateway: Annotated[Optional[str], typer.Option(
        "--gateway", help=("A gateway in front of a vLLM that serves traffic: scoring goes through it, which sends "
                           "each prompt-logprobs request to vLLM alone (batched with live traffic they crash vLLM "
                           "0.32); with --candidate it is also reloaded after adoption. Admin key from "
                           "FORGETLESS_ADMIN_KEY."))] = None,
):
    """Score base and adapters on every eval set; write the capability matrix and quality-gated routing table.

    With --candidate: audit one new adapter before adopting it (exit 1 when it is rejected)."""
    from gateway.config import Secrets

    cfg = load_config(config)
    check_output_dir(out)
    admin = Secrets().admin_key
    headers = None
    if gateway:
        from deploy.audit import admin_headers

        headers = admin_headers(admin.get_secret_value() if admin else None)  # one line, before any slow work
    if candidate is None:
        from deploy.audit import run_audit

        if gateway and url:
            raise InputError("--gateway and --url: pass one (the gateway knows its vLLM)")
        doc = run_audit(cfg, eval_dir, out, limit, forgetting_limit, url, task_limit, switch_margin,
                        (SURE_MIN if sure_min is None else sure_min) if sure_routes else None,
                        fit_sure=sure_min is None, sure_cost=sure_cost, gateway=gateway, gateway_headers=headers)
        sure = {r: f"{m} at p >= {doc['sure_mins'].get(r, doc['sure_min']):g}" for r, m in doc["sure"].items()}
        typer.echo(f"routing table: {json.dumps(doc['routes'])}  flagged: {doc['flagged'] or 'none'}"
                   + (f"  sure-only: {json.dumps(sure)}" if sure else ""))
        typer.echo(f"wrote {out}/audit.md and {doc['table_path']}")
        return
    from deploy.candidate import audit_candidate

    verdict = audit_candidate(cfg, candidate, eval_dir, out, route, limit, forgetting_limit, url, task_limit, gateway, headers,
                              sure_cost)
    name = verdict.report["candidate"]
    if not verdict.adopted:
        typer.echo(f"rejected '{name}': {verdict.reason}; unloaded from vLLM, routing table unchanged")
        raise typer.Exit(1)
    typer.echo(f"adopted '{name}' for route '{verdict.report['route']}': {verdict.reason}; wrote {cfg.router.table}")
    if gateway:
        _reload_gateway(gateway)


def _reload_gateway(url: str) -> None:
    import httpx

    from gateway.config import Secrets

    key = Secrets().admin_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    try:
        r = httpx.post(f"{url.rstrip('/')}/admin/reload", headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        typer.echo(f"gateway at {url} not reachable ({type(exc).__name__}); it reads the table at its next reload or start", err=True)
        raise typer.Exit(2) from None
    if r.status_code != 200:
        typer.echo(f"gateway at {url} refused the reload: HTTP {r.status_code} {r.text[:200]}", err=True)
        raise typer.Exit(2)
    typer.echo(f"gateway at {url} reloaded: routes {json.dumps(r.json().get('table', {}))}")


if __name__ == "__main__":
    app()
