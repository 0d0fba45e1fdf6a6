import asyncio
import time

from fastapi import Request

from gateway.auth import is_admin
from gateway.completions.split import routed_prompts, serve_split
from gateway.completions.token_prompts import detokenize, token_prompts
from gateway.protocol import CompletionRequest
from gateway.selection import ROUTE_HEADER, choose_target, completion_routing_text, prompt_routing_text


async def serve_completion(request: Request, parsed: CompletionRequest):
    state = request.app.state.gateway
    body = await request.json()
    proxy = request.app.state.proxies["completions"]
    forced = request.headers.get(ROUTE_HEADER)
    prompt = body["prompt"]
    policy = state.cfg.router
    ids = items = None
    if forced is None and parsed.model == policy.virtual_model and state.router is not None:
        ids = token_prompts(prompt)  # token ids: the router reads them as the upstream's tokenizer does
        items = ids if ids is not None else routed_prompts(prompt)
    if items is None:
        text = completion_routing_text(prompt, policy)
    else:
        texts = [prompt_routing_text(t, policy) for t in (await detokenize(state, ids) if ids is not None else items)]
        if len(items) > 1:
            # several prompts for the router: each is routed on its own (gateway/completions/split.py)
            started = time.perf_counter()
            targets = await asyncio.gather(*(choose_target(state, parsed.model, t, None) for t in texts))
            return await serve_split(request, body, items, texts, list(targets), proxy,
                                     (time.perf_counter() - started) * 1000.0)
        text = texts[0]
    target = await choose_target(state, parsed.model, text, forced, admin=is_admin(request))
    return await proxy(request, body, target, text)
