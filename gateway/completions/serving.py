from fastapi import Request

from gateway.auth import is_admin
from gateway.protocol import CompletionRequest
from gateway.selection import ROUTE_HEADER, choose_target, completion_routing_text


async def serve_completion(request: Request, parsed: CompletionRequest):
    state = request.app.state.gateway
    body = await request.json()
    text = completion_routing_text(body["prompt"])
    target = await choose_target(state, parsed.model, text, request.headers.get(ROUTE_HEADER),
                                 admin=is_admin(request))
    return await request.app.state.proxies["completions"](request, body, target, text)
