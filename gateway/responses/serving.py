from urllib.parse import quote

import httpx
from fastapi import Request, Response

from gateway.auth import is_admin
from gateway.errors import error_response
from gateway.protocol import ResponsesRequest
from gateway.proxy import HOP_HEADERS
from gateway.selection import ROUTE_HEADER, choose_target, responses_routing_text


async def serve_response(request: Request, parsed: ResponsesRequest):
    state = request.app.state.gateway
    body = await request.json()
    text = responses_routing_text(body, state.cfg.router)
    target = await choose_target(state, parsed.model, text, request.headers.get(ROUTE_HEADER),
                                 admin=is_admin(request))
    return await request.app.state.proxies["responses"](request, body, target, text)


async def pass_stored(request: Request, response_id: str, action: str = "") -> Response:
    """A stored response lives in vLLM (when its response store is on): retrieve or cancel it there as it is."""
    state = request.app.state.gateway
    url = f"{state.cfg.upstream_url}/v1/responses/{quote(response_id, safe='')}{action}"
    try:
        resp = await state.client.request(request.method, url, headers=state.upstream_headers(),
                                          timeout=state.cfg.gateway.timeouts.total)
    except httpx.HTTPError as exc:
        return error_response(503, f"upstream unavailable ({type(exc).__name__})", code="upstream_unavailable",
                              headers={"Retry-After": "5"})
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
    return Response(resp.content, status_code=resp.status_code, headers=headers, media_type=resp.headers.get("content-type"))
