from urllib.parse import quote

import httpx
from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gateway.auth import is_admin
from gateway.errors import error_response, upstream_error_body
from gateway.protocol import ResponsesRequest
from gateway.proxy import HOP_HEADERS, stream_error
from gateway.selection import ROUTE_HEADER, choose_target, responses_routing_text


async def serve_response(request: Request, parsed: ResponsesRequest):
    state = request.app.state.gateway
    body = await request.json()
    text = responses_routing_text(body, state.cfg.router)
    target = await choose_target(state, parsed.model, text, request.headers.get(ROUTE_HEADER),
                                 admin=is_admin(request))
    return await request.app.state.proxies["responses"](request, body, target, text)


async def pass_stored(request: Request, response_id: str, action: str = "", params: dict | None = None) -> Response:
    """A stored response lives in vLLM (when its response store is on): retrieve it (as a whole, or replayed as
    a stream of events) or cancel it there, and answer what vLLM answers."""
    state = request.app.state.gateway
    url = f"{state.cfg.upstream_url}/v1/responses/{quote(response_id, safe='')}{action}"
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (params or {}).items() if v is not None}
    upstream = state.client.build_request(request.method, url, params=params, headers=state.upstream_headers(),
                                          timeout=state.cfg.gateway.timeouts.total)
    try:
        resp = await state.client.send(upstream, stream=True)
    except httpx.HTTPError as exc:
        return _unavailable(exc)
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS | {"content-type"}}
    if resp.status_code == 200 and resp.headers.get("content-type", "").startswith("text/event-stream"):
        async def relay():
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            except httpx.HTTPError as exc:  # vLLM ends the replay of a response it kept no events for this way
                yield stream_error("responses", 502, f"upstream stream interrupted ({type(exc).__name__})",
                                   "upstream_stream_error")
            finally:
                await resp.aclose()
        return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)
    try:
        content = await resp.aread()
    except httpx.HTTPError as exc:
        return _unavailable(exc)
    finally:
        await resp.aclose()
    if resp.status_code >= 400:
        return JSONResponse(upstream_error_body(resp.status_code, content), status_code=resp.status_code, headers=headers)
    return Response(content, status_code=resp.status_code, headers=headers, media_type=resp.headers.get("content-type"))


def _unavailable(exc: httpx.HTTPError) -> Response:
    return error_response(503, f"upstream unavailable ({type(exc).__name__})", code="upstream_unavailable",
                          headers={"Retry-After": "5"})
