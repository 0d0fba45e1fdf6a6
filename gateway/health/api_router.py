import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.auth import require_client_key

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health():
    """Liveness: the gateway process answers."""
    return {"status": "ok"}


@router.get("/ready", dependencies=[Depends(require_client_key)])
async def ready(request: Request):
    """Readiness: a router is loaded and the upstream vLLM answers /health."""
    state = request.app.state.gateway
    upstream = False
    try:
        r = await state.client.get(f"{state.cfg.upstream_url}/health", timeout=2.0)
        upstream = r.status_code == 200
    except httpx.HTTPError:
        pass
    ok = upstream and state.router is not None
    body = {"ready": ok, "router": state.router is not None, "upstream": upstream}
    return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


@router.get("/metrics", dependencies=[Depends(require_client_key)])
async def metrics(request: Request):
    """Prometheus metrics per route."""
    return Response(generate_latest(request.app.state.gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
