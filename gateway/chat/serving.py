from fastapi import Request

from gateway.auth import is_admin
from gateway.protocol import ChatCompletionRequest
from gateway.selection import ROUTE_HEADER, chat_routing_text, choose_target


async def serve_chat(request: Request, parsed: ChatCompletionRequest):
    state = request.app.state.gateway
    body = await request.json()  # the client's own JSON (cached by Starlette): unknown fields travel untouched
    text = chat_routing_text(body["messages"], state.cfg.router)
    target = await choose_target(state, parsed.model, text, request.headers.get(ROUTE_HEADER),
                                 admin=is_admin(request))
    return await request.app.state.proxies["chat/completions"](request, body, target, text)
