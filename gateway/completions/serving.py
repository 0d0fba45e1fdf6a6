import asyncio
import time

from fastapi import Request

from gateway.auth import is_admin
from gateway.completions.split import routed_prompts, serve_split
from gateway.protocol import CompletionRequest
from gateway.selection import ROUTE_HEADER, choose_target, completion_routing_text


async def serve_completion(request: Request, parsed: CompletionRequest):
    state = request.app.state.gateway
    body = await request.json()
    proxy = request.app.state.proxies["completions"]
    forced = request.headers.get(ROUTE_HEADER)
    prompts = routed_prompts(body["prompt"])
    if prompts is not None and forced is None and parsed.model == state.cfg.router.virtual_model:
        # several prompts for the router: each is routed on its own (gateway/completions/split.py)
        started = time.perf_counter()
        targets = await asyncio.gather(*(choose_target(state, parsed.model, p, None) for p in prompts))
        return await serve_split(request, body, prompts, list(targets), proxy, (time.perf_counter() - started) * 1000.0)
    text = completion_routing_text(body["prompt"])
    target = await choose_target(state, parsed.model, text, forced, admin=is_admin(request))
    return await proxy(request, body, target, text)
