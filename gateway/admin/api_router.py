from fastapi import APIRouter, Depends, Request

from gateway.admin import serving
from gateway.admin.protocol import CandidateRequest, LoadAdapterRequest, ReloadRequest
from gateway.auth import require_admin_key

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


@router.post("/reload")
async def reload_router(request: Request, body: ReloadRequest | None = None):
    """Load a router from disk and swap it in; in-flight requests finish on the old one."""
    return await serving.reload_router(request.app.state.gateway, body.path if body else None)


@router.post("/adapters")
async def load_adapter(request: Request, body: LoadAdapterRequest):
    """Load an adapter (path under the adapter root) into vLLM and route its route to it."""
    return await serving.load_adapter(request.app.state.gateway, body)


@router.delete("/adapters/{name}")
async def unload_adapter(request: Request, name: str):
    """Unload an adapter from vLLM; its route goes to the base model."""
    return await serving.unload_adapter(request.app.state.gateway, name)


@router.post("/candidates")
async def add_candidate(request: Request, body: CandidateRequest):
    """Answer an adapter under audit (already loaded in vLLM) when the admin names it; it is never routed to."""
    return await serving.add_candidate(request.app.state.gateway, body.name)


@router.delete("/candidates/{name}")
async def remove_candidate(request: Request, name: str):
    """Stop answering a candidate (vLLM keeps or unloads it: that is the audit's business)."""
    return serving.remove_candidate(request.app.state.gateway, name)
