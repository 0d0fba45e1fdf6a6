"""`forgetless bench ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from classifier.errors import InputError, check_output_dir, exit_on_input_error

app = typer.Typer(help="Reproducible benchmarks; results go to benchmarks/results/.", no_args_is_help=True)


@app.command()
@exit_on_input_error
def routing(
    data: Annotated[Optional[list[Path]], typer.Option("--data", help="Labelled JSONL (repeatable). Default: ../shared/data/routing/dev.jsonl")] = None,
    fallback: Annotated[str, typer.Option("--fallback")] = "general",
    out: Annotated[Optional[Path], typer.Option("--out", help="Results directory.")] = None,
    outside: Annotated[Optional[Path], typer.Option(
        "--outside", help="Adapter-format data directory (<route>/train.jsonl, eval.jsonl, chat.jsonl): its prompts "
        "from sources the routing data lacks are a second test set. Default with the default --data: "
        "../shared/data/adapters when present.")] = None,
):
    """Routers compared on held-out source families: accuracy, macro-F1, fallback P/R, ECE, latency."""
    from benchmarks.routing import ADAPTER_DATA, DEV, RESULTS, run

    check_output_dir(out or RESULTS)
    files = data or [DEV]
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: no such file")
    if outside is None and data is None and ADAPTER_DATA.is_dir():
        outside = ADAPTER_DATA
    report = run(files, fallback, out or RESULTS, outside=outside)
    for name, m in report["methods"].items():
        typer.echo(f"{name:24s} macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}  "
                   f"fallback P/R {m['fallback_precision']:.2f}/{m['fallback_recall']:.2f}  p50 {m['p50_ms']:.2f} ms")
    for name, m in report.get("outside", {}).get("methods", {}).items():
        typer.echo(f"{name:24s} outside sources: {m['accuracy']:.3f} correct (mean over sources {m['mean_over_sources']:.3f})")
    typer.echo(f"wrote {(out or RESULTS) / 'routing.md'}")


@app.command()
@exit_on_input_error
def overhead(
    config: Annotated[Path, typer.Option("--config", help="routes.yaml to serve (default: the demo).")] = Path("deploy/routes.demo.yaml"),
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 32,
    waves: Annotated[int, typer.Option("--waves", min=1)] = 8,
    rps_seconds: Annotated[float, typer.Option("--rps-seconds", min=1.0, help="Length of each requests/s run.")] = 15.0,
    rps_runs: Annotated[int, typer.Option("--rps-runs", min=1, help="Requests/s runs of each kind (new and repeated "
                                          "prompts, alternating); the report gives the median.")] = 3,
    out: Annotated[Optional[Path], typer.Option("--out")] = None,
):
    """Latency the gateway adds in front of real vLLM, and its requests/s in front of an instant upstream."""
    from benchmarks.overhead import RESULTS, run

    check_output_dir(out or RESULTS)
    r = run(config, concurrency=concurrency, waves=waves, rps_seconds=rps_seconds, rps_runs=rps_runs, out_dir=out or RESULTS)
    typer.echo(f"added p50 {r['added_p50_ms']:.1f} ms, p99 {r['added_p99_ms']:.1f} ms at {r['concurrency']} streams; "
               f"gateway {r['gateway_rps']:.0f} req/s vs instant upstream")


@app.command()
@exit_on_input_error
def forgetting(
    quick: Annotated[bool, typer.Option("--quick", help="4 items per column, 1 answered greedily, cached/committed adapters only.")] = False,
    items: Annotated[Optional[int], typer.Option("--items", min=1, help="Reported items per column (default 8: ~40 min of scoring here; quick 4).")] = None,
    forgetting_limit: Annotated[float, typer.Option("--forgetting-limit", min=0.0, help="Audit's max general NLL loss.")] = 0.05,
    out: Annotated[Optional[Path], typer.Option("--out", help="Results directory (default benchmarks/results, quick: .../quick).")] = None,
    tasks: Annotated[bool, typer.Option("--tasks/--no-tasks", help=(
        "Also answer the reported math/code/finance items greedily: final-number exact match, code pass@1."))] = True,
    rescore: Annotated[bool, typer.Option("--rescore", help=(
        "Score every item again instead of reusing per-item scores cached by an earlier run with the same "
        "models, items and library versions."))] = False,
):
    """Forgetting matrix per training regime: base, each adapter, mixed, routed, oracle on 5 domains + 3 general sets."""
    from benchmarks.forgetting import RESULTS, run

    out_dir = out or (RESULTS / "quick" if quick else RESULTS)
    check_output_dir(out_dir)
    doc = run(quick=quick, out_dir=out_dir, n_report=items, forgetting_limit=forgetting_limit, tasks=tasks,
              rescore=rescore)
    for name, r in doc["regimes"].items():
        t = r["targets"]
        typer.echo(f"{name:10s} routed≈oracle (2 %): {'yes' if t['met_oracle'] else 'no'}  routed≥base (0.5 %): "
                   f"{'yes' if t['met_base'] else 'no'}" + (f"  routed beats mixed on general: {'yes' if t['met_mixed'] else 'no'}"
                                                           if "met_mixed" in t else ""))
    for name, why in doc["skipped_regimes"].items():
        typer.echo(f"{name:10s} skipped: {why}")
    typer.echo(f"wrote {out_dir / 'forgetting.md'}")


@app.command()
@exit_on_input_error
def reliability(
    config: Annotated[Path, typer.Option("--config", help="routes.yaml to serve (default: the demo).")] = Path("deploy/routes.demo.yaml"),
    requests: Annotated[int, typer.Option("--requests", min=1)] = 2000,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 64,
    fuzz_cases: Annotated[int, typer.Option("--fuzz-cases", min=2, help="Generated cases per API operation.")] = 240,
    out: Annotated[Optional[Path], typer.Option("--out")] = None,
    only_fuzz: Annotated[bool, typer.Option("--only-fuzz", help="Re-run only the fuzzing and update an existing report.")] = False,
):
    """Load through the gateway, fault drills (vLLM killed and restarted, timeouts, disconnects), schema fuzzing."""
    from benchmarks.reliability import RESULTS, refuzz, run

    if not config.is_file():
        raise InputError(f"{config}: config file not found")
    check_output_dir(out or RESULTS)
    if only_fuzz:
        r = refuzz(config, fuzz_cases, out or RESULTS)
        typer.echo(f"fuzz: {r['fuzz_cases']} cases, {r['fuzz_failures']} failures; wrote {(out or RESULTS) / 'reliability.md'}")
        return
    r = run(config, requests, concurrency, fuzz_cases, out or RESULTS)
    typer.echo(f"load: {r['requests']} requests at {r['concurrency']}: lost {r['lost']}, 5xx {r['gateway_5xx']}, "
               f"RSS {r['rss_growth_pct']:+.1f} %")
    typer.echo(f"faults: {sum(f['passed'] for f in r['faults'])}/{len(r['faults'])} passed; "
               f"fuzz: {r['fuzz_cases']} cases, {r['fuzz_failures']} failures")
    typer.echo(f"wrote {(out or RESULTS) / 'reliability.md'}")
