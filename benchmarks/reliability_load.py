"""Load through the gateway: N requests at C concurrent, half streaming, and an account of every one of them.

Each request ends as exactly one of: `ok` (a complete answer: a JSON body with choices, or a stream with
content chunks and `[DONE]`), `error` (a well-formed OpenAI error: a 4xx/5xx JSON error body, or an error
event followed by `[DONE]` in a stream) or `lost` (anything else: a dropped connection, a truncated stream, a
malformed body, a hang past the timeout). Gateway RSS is sampled from its PID during the run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx

PROMPTS = [
    "Is a verbal agreement legally binding?", "What are the side effects of ibuprofen?",
    "Write a Python function that reverses a linked list.", "Solve 3x + 7 = 22 for x.",
    "How is free cash flow computed?", "What is the capital of Australia?",
    "Explain the doctrine of consideration in contract law.", "What does an elevated troponin level indicate?",
    "Why does my recursive function hit the recursion limit?", "What is the derivative of x^3 * sin(x)?",
    "What is the difference between a bond's coupon and its yield?", "Suggest a name for a golden retriever puppy.",
]


def _classify_json(r: httpx.Response) -> str:
    try:
        doc = r.json()
    except ValueError:
        return "lost"
    if r.status_code == 200:
        return "ok" if isinstance(doc, dict) and doc.get("choices") else "lost"
    err = doc.get("error") if isinstance(doc, dict) else None
    return "error" if isinstance(err, dict) and err.get("message") else "lost"


def _classify_stream(text: str) -> str:
    events = [ln[6:] for ln in text.split("\n") if ln.startswith("data: ")]
    if not events or events[-1].strip() != "[DONE]":
        return "lost"
    docs = []
    for e in events[:-1]:
        try:
            docs.append(json.loads(e))
        except ValueError:
            return "lost"
    if any(isinstance(d, dict) and isinstance(d.get("error"), dict) for d in docs):
        return "error"
    return "ok" if any(d.get("choices") for d in docs if isinstance(d, dict)) else "lost"


async def _one(client: httpx.AsyncClient, url: str, i: int, max_tokens: int, rng: random.Random, timeout: float) -> dict:
    stream = i % 2 == 1
    body = {"model": "auto", "max_tokens": max_tokens, "temperature": 0.7, "stream": stream,
            "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
    t = time.perf_counter()
    status = None
    try:
        if stream:
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout) as r:
                status = r.status_code
                text = (await r.aread()).decode("utf-8", errors="replace")
            outcome = _classify_stream(text) if status == 200 else _classify_json(httpx.Response(status, content=text.encode()))
        else:
            r = await client.post(f"{url}/v1/chat/completions", json=body, timeout=timeout)
            status = r.status_code
            outcome = _classify_json(r)
    except (httpx.HTTPError, asyncio.TimeoutError) as exc:  # "ReadError", or "200 then ReadError" mid-stream
        outcome, status = "lost", f"{status} then {type(exc).__name__}" if status else type(exc).__name__
    return {"outcome": outcome, "status": status, "stream": stream, "ms": (time.perf_counter() - t) * 1000}


async def _run(url: str, n: int, concurrency: int, max_tokens: int, pid: int | None, timeout: float, progress) -> dict:
    import psutil

    proc = psutil.Process(pid) if pid else None
    rss: list[tuple[int, int]] = []  # (requests done, rss bytes)
    rng = random.Random(0)
    results: list[dict] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        async def worker():
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await _one(client, url, i, max_tokens, rng, timeout))
                if progress:
                    progress()
                if proc is not None and len(results) % 50 == 0:
                    rss.append((len(results), proc.memory_info().rss))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    if proc is not None:
        rss.append((len(results), proc.memory_info().rss))
    return {"results": results, "rss": rss, "wall_s": wall}


def run_load(url: str, n: int = 2000, concurrency: int = 64, max_tokens: int = 8, gateway_pid: int | None = None,
             timeout: float = 300.0, progress=None) -> dict:
    import numpy as np

    raw = asyncio.run(_run(url.rstrip("/"), n, concurrency, max_tokens, gateway_pid, timeout, progress))
    res = raw["results"]
    ms = np.array([r["ms"] for r in res if r["outcome"] == "ok"]) if res else np.array([0.0])
    statuses: dict[str, int] = {}
    for r in res:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    rss = raw["rss"]
    # growth measured from after the warm-up (first 10 % of requests: pools, caches and JIT settle) to the end
    warm = next((b for done, b in rss if done >= n * 0.1), rss[0][1]) if rss else 0
    end = rss[-1][1] if rss else 0
    return {
        "requests": len(res), "concurrency": concurrency, "max_tokens": max_tokens,
        "ok": sum(r["outcome"] == "ok" for r in res), "errors": sum(r["outcome"] == "error" for r in res),
        "lost": sum(r["outcome"] == "lost" for r in res) + (n - len(res)),
        "gateway_5xx": sum(isinstance(r["status"], int) and r["status"] >= 500 for r in res),
        "statuses": statuses, "streams": sum(r["stream"] for r in res),
        "p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "wall_s": round(raw["wall_s"], 1),
        "requests_per_s": round(len(res) / raw["wall_s"], 1) if raw["wall_s"] else 0.0,
        "rss_warm_mb": round(warm / 2**20, 1), "rss_end_mb": round(end / 2**20, 1),
        "rss_growth_pct": round(100.0 * (end - warm) / warm, 2) if warm else 0.0,
        "rss_samples_mb": [(d, round(b / 2**20, 1)) for d, b in rss],
    }
