"""A completions request with several prompts, routed prompt by prompt.

Each prompt gets its own route decision (a prompt of token ids on its text, read by the upstream's tokenizer:
gateway/completions/token_prompts.py). The prompts that go to the same model travel together, one upstream
request per model, all at once. The answers are put back in prompt order, as one model would have numbered them:
the choice for prompt p, sample j is number p * n + j. A stream is merged event by event; each chunk keeps the
`model` that wrote it, and the usage of all requests comes as one chunk at the end (with
`stream_options.continuous_usage_stats`, each chunk's usage is the whole request's so far). If any request fails, the
whole request fails with that error and the other requests are cancelled.

Headers say what happened to each prompt, in prompt order, comma-separated: `x-forgetless-route`,
`x-forgetless-model`, `x-forgetless-confidence`, and `x-forgetless-fallback` ("-" for a prompt without one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from gateway.state import Target

_DONE = b"data: [DONE]"


def group_by_model(targets: list[Target]) -> dict[str, list[int]]:
    """Prompt positions per model, in the order the models first appear."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault(t.model, []).append(i)
    return groups


class _Renumber:
    """Maps a sub-request's choice numbers to the whole request's: sub-request k sent the prompts at `positions[k]`."""

    def __init__(self, positions: list[list[int]], n: int):
        self.positions, self.n = positions, n

    def __call__(self, k: int, index: int) -> int:
        q, j = divmod(index, self.n)
        return self.positions[k][q] * self.n + j


def _add_usage(total: dict | None, usage) -> dict | None:
    """Usage added up: every count, also the nested ones (`prompt_tokens_details.cached_tokens`); anything else
    (a null detail) is kept from the first usage that has it."""
    if not isinstance(usage, dict):
        return total
    total = dict(total or {})
    for key, value in usage.items():
        had = total.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            total[key] = (had if isinstance(had, int) and not isinstance(had, bool) else 0) + value
        elif isinstance(value, dict):
            total[key] = _add_usage(had if isinstance(had, dict) else None, value)
        else:
            total.setdefault(key, value)
    return total


def _headers(request_id: str, targets: list[Target], group_of: list[int], answered: list[Target], router_ms: float):
    """Per-prompt result headers; `answered[k]` is sub-request k's target after the proxy (a retry on the base
    changes its model and fallback)."""
    final = [answered[group_of[i]] for i in range(len(targets))]
    fallbacks = [f.fallback if f.fallback == "upstream-error" else t.fallback for t, f in zip(targets, final)]
    h = {
        "x-request-id": request_id,
        "x-forgetless-route": ",".join(t.route or t.model for t in targets),
        "x-forgetless-model": ",".join(f.model for f in final),
        "x-forgetless-confidence": ",".join("-" if t.confidence is None else f"{t.confidence:.4f}" for t in targets),
        "x-forgetless-router-ms": f"{router_ms:.3f}",
    }
    if any(fallbacks):
        h["x-forgetless-fallback"] = ",".join(f or "-" for f in fallbacks)
    return h


async def serve_split(request: Request, body: dict, prompts: list, texts: list[str], targets: list[Target], proxy,
                      router_ms: float) -> Response:
    """`prompts` as the client sent them (strings or token-id lists), `texts` what the router read of each."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
    groups = group_by_model(targets)
    positions = list(groups.values())
    group_of = [0] * len(prompts)
    for k, pos in enumerate(positions):
        for i in pos:
            group_of[i] = k
    # one target per sub-request: its model, and the first of its prompts' route for metrics and logs
    answered = [dataclasses.replace(targets[pos[0]]) for pos in positions]
    subs = [{**body, "prompt": [prompts[i] for i in pos]} for pos in positions]
    sub_texts = ["\n".join(texts[i] for i in pos) for pos in positions]
    renumber = _Renumber(positions, int(body.get("n") or 1))

    def headers() -> dict[str, str]:  # read after the proxy calls: a retry on the base changes a target
        return _headers(request_id, targets, group_of, answered, router_ms)

    if not body.get("stream"):
        results, failed = await _all_or_first_failure(
            [proxy(request, s, t, x, request_id=request_id) for s, t, x in zip(subs, answered, sub_texts)])
        if failed is not None:
            return _with_headers(failed, headers())
        return _merge_bodies(results, renumber, headers())
    return await _merge_streams(request, proxy, subs, answered, sub_texts, renumber, request_id, headers)


#: cancelled pumps still closing their upstream stream (a task with no reference left may be collected)
_CLOSING: set[asyncio.Task] = set()


def _cancel(tasks: list[asyncio.Task]) -> None:
    """Cancel without waiting: also usable where the caller is itself being cancelled (a client that went away),
    where every further await would be cancelled again before it could wait."""
    for t in tasks:
        if not t.done():
            t.cancel()
            _CLOSING.add(t)
            t.add_done_callback(_CLOSING.discard)


async def _all_or_first_failure(calls) -> tuple[list[Response], Response | None]:
    """Run the sub-requests at once; at the first answer that is not a 200, cancel the rest (closing a request's
    upstream connection aborts it in vLLM) and return that answer."""
    tasks = [asyncio.create_task(c) for c in calls]
    try:
        for done in asyncio.as_completed(tasks):
            resp = await done
            if resp.status_code != 200:
                _cancel(tasks)
                return [], resp
    except BaseException:
        _cancel(tasks)
        raise
    return [t.result() for t in tasks], None


def _with_headers(resp: Response, headers: dict[str, str]) -> Response:
    if "x-forgetless-fallback" in resp.headers:  # the failed sub-request's own; the per-prompt one replaces it
        del resp.headers["x-forgetless-fallback"]
    resp.headers.update(headers)
    return resp


def _merge_bodies(results: list[Response], renumber: _Renumber, headers: dict[str, str]) -> Response:
    docs = [json.loads(r.body) for r in results]
    merged = dict(docs[0])
    choices, usage = [], None
    for k, doc in enumerate(docs):
        for c in doc.get("choices") or []:
            choices.append({**c, "index": renumber(k, c.get("index", 0))})
        usage = _add_usage(usage, doc.get("usage"))
    merged["choices"] = sorted(choices, key=lambda c: c["index"])
    merged["model"] = ",".join(dict.fromkeys(d.get("model", "") for d in docs))
    if usage is not None:
        merged["usage"] = usage
    return JSONResponse(merged, headers=headers)


async def _merge_streams(request, proxy, subs, answered, texts, renumber, request_id, headers) -> Response:
    queue: asyncio.Queue = asyncio.Queue()
    pumps: list[asyncio.Task] = []

    async def pump(k: int, stream: StreamingResponse) -> None:
        try:
            async for chunk in stream.body_iterator:
                queue.put_nowait((k, chunk if isinstance(chunk, bytes) else chunk.encode()))
        finally:
            queue.put_nowait((k, None))
            if stream.background is not None:  # what Starlette runs after a response: here, the hold's release
                await stream.background()

    async def open_one(k: int) -> Response:
        resp = await proxy(request, subs[k], answered[k], texts[k], request_id=request_id)
        if isinstance(resp, StreamingResponse):  # read at once: it holds the upstream gate until it ends
            pumps.append(asyncio.create_task(pump(k, resp)))
            return Response(status_code=200)
        return resp

    try:
        _, failed = await _all_or_first_failure([open_one(k) for k in range(len(subs))])
        if failed is not None:
            await asyncio.sleep(0)  # let every pump start, so that cancelling it runs its stream's clean-up
            _cancel(pumps)
            return _with_headers(failed, headers())
    except BaseException:
        _cancel(pumps)
        raise

    stream_id = f"cmpl-{uuid.uuid4().hex}"

    async def merged():
        buffers = [b""] * len(subs)
        open_streams, usage, last = len(subs), None, None
        so_far: dict[int, dict] = {}  # continuous usage stats: each sub-request's latest usage
        try:
            while open_streams:
                k, chunk = await queue.get()
                if chunk is None:
                    open_streams -= 1
                    continue
                buffers[k] += chunk
                *events, buffers[k] = buffers[k].split(b"\n\n")
                for event in events:
                    out, doc = _renumber_event(event, k, renumber, stream_id)
                    if doc is not None and "error" in doc:  # a sub-stream failed: end the whole stream with its error
                        yield event + b"\n\n" + _DONE + b"\n\n"
                        return
                    if doc is not None and not doc.get("choices") and "usage" in doc:
                        usage, last = _add_usage(usage, doc.get("usage")), doc
                        continue
                    if doc is not None and isinstance(doc.get("usage"), dict):
                        # a chunk's usage is its own sub-request's so far; the client is told the whole request's
                        so_far[k] = doc["usage"]
                        out = _event({**doc, "usage": functools.reduce(_add_usage, so_far.values(), None)})
                    if out:
                        yield out
            if last is not None:
                yield _event({**last, "id": stream_id, "model": ",".join(dict.fromkeys(t.model for t in answered)),
                              "usage": usage or {}})
            yield _DONE + b"\n\n"
        finally:
            _cancel(pumps)

    async def cancel_all() -> None:  # runs after the response, also when the client left before it started
        _cancel(pumps)

    h = headers()
    h.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
    return StreamingResponse(merged(), media_type="text/event-stream", headers=h, background=BackgroundTask(cancel_all))


def _renumber_event(event: bytes, k: int, renumber: _Renumber, stream_id: str) -> tuple[bytes | None, dict | None]:
    """(bytes to send, parsed JSON) for one SSE event of sub-stream k; [DONE] is dropped (the merge sends one)."""
    data = event.strip()
    if data == _DONE:
        return None, None
    if not data.startswith(b"data: {"):
        return (event + b"\n\n" if data else None), None
    try:
        doc = json.loads(data[6:])
    except ValueError:
        return event + b"\n\n", None
    if not isinstance(doc, dict):
        return event + b"\n\n", None
    for c in doc.get("choices") or []:
        if isinstance(c, dict) and isinstance(c.get("index"), int):
            c["index"] = renumber(k, c["index"])
    if "id" in doc:
        doc["id"] = stream_id
    return _event(doc), doc


def _event(doc: dict) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def routed_prompts(prompt) -> list[str] | None:
    """The prompts to route one by one: a list of at least two strings; None for anything else."""
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        return prompt
    return None
