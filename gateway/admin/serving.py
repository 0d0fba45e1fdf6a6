"""Runtime changes: router swap and adapter load/unload, each all-or-nothing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx
from starlette.concurrency import run_in_threadpool

from classifier.errors import InputError
from classifier.routers.embedding import EmbeddingRouter
from deploy.adapter_check import check_adapter
from gateway.admin.protocol import LoadAdapterRequest
from gateway.config import AdapterConfig
from gateway.errors import GatewayError
from gateway.routing_table import RoutingTable
from gateway.state import GatewayState

log = logging.getLogger("forgetless.gateway")


async def reload_router(state: GatewayState, path: str | None) -> dict:
    """Swap in the router at `path` (default: the configured one) and re-read the audit's routing table."""
    target = Path(path) if path else state.cfg.router.path
    async with state.reload_lock:
        old = state.router
        try:
            encoder = old.encoder if old is not None else None
            if "\x00" in str(target):
                raise InputError("'path' contains a NUL byte")
            new = await run_in_threadpool(EmbeddingRouter.load, target, encoder)
            if encoder is None:
                await run_in_threadpool(new.encoder.warm_up)
        except (InputError, OSError, ValueError) as exc:
            raise GatewayError(400, f"reload failed, the previous router keeps serving: {exc}", param="path",
                               code="router_invalid") from None
        try:
            table = RoutingTable.load(state.cfg.router.table)
            adopted = {n: AdapterConfig(name=n, path=Path(e["path"]), description=str(e.get("description", "")))
                       for n, e in table.adopted.items() if n not in state.adapters}
            table.check_models({*state.known_models(), *adopted}, state.cfg.router.table)
        except (InputError, ValueError) as exc:
            raise GatewayError(400, f"reload failed, the previous router and table keep serving: {exc}",
                               param="table", code="table_invalid") from None
        # plain assignments: requests already holding the old router or table finish with them
        state.router, state.table = new, table
        state.adapters.update(adopted)
        state.candidates.difference_update(adopted)  # an adopted candidate is an adapter now
        stale = table.stale_for(new.fingerprint())
        if stale:
            log.warning(stale)
    return {"reloaded": True, "path": str(target), "routes": new.labels, "fallback": new.fallback,
            "table": state.routing_table(), **({"warning": stale} if stale else {})}


def resolve_under_root(state: GatewayState, raw: str) -> Path:
    root = state.cfg.adapter_root
    if root is None:
        raise GatewayError(403, "runtime adapter loading is disabled: set adapter_root in routes.yaml", code="adapter_root_unset")
    root_real = Path(os.path.realpath(root))
    if "\x00" in raw or not raw.strip():
        raise GatewayError(400, "'path' must be a non-empty path without NUL bytes", param="path", code="invalid_value")
    candidate = Path(raw)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise GatewayError(400, "'path' must be relative to the adapter root, without '..'", param="path", code="path_outside_root")
    real = Path(os.path.realpath(root_real / candidate))  # follows symlinks
    if os.path.commonpath([real, root_real]) != str(root_real):
        raise GatewayError(400, "'path' resolves outside the adapter root", param="path", code="path_outside_root")
    return real


async def load_adapter(state: GatewayState, req: LoadAdapterRequest) -> dict:
    if req.name in (state.base, state.cfg.router.virtual_model):
        raise GatewayError(400, f"'name': '{req.name}' is reserved", param="name", code="invalid_value")
    path = resolve_under_root(state, req.path)
    base_dir = state.cfg.base.path if not state.cfg.base.path.startswith("builtin:") else None
    if base_dir is None:
        from deploy.base_model import DEFAULT_BASE_DIR

        base_dir = DEFAULT_BASE_DIR
    try:
        check_adapter(path, Path(base_dir), state.cfg.vllm.max_lora_rank)
    except InputError as exc:
        raise GatewayError(400, f"adapter '{req.name}': {exc}".replace(str(path), req.path), param="path", code="adapter_invalid") from None
    try:
        r = await state.client.post(f"{state.cfg.upstream_url}/v1/load_lora_adapter",
                                    json={"lora_name": req.name, "lora_path": str(path)}, headers=state.upstream_headers())
    except httpx.HTTPError as exc:
        raise GatewayError(503, f"upstream unavailable ({type(exc).__name__})", code="upstream_unavailable",
                           headers={"Retry-After": "5"}) from None
    if r.status_code >= 400:
        raise GatewayError(400 if r.status_code < 500 else 502, f"vLLM refused adapter '{req.name}': {r.text[:300]}",
                           param="path", code="adapter_load_failed")
    state.adapters[req.name] = AdapterConfig(name=req.name, path=path, description=req.description)
    return {"loaded": req.name, "routes": state.routing_table()}


async def unload_adapter(state: GatewayState, name: str) -> dict:
    if name not in state.adapters:
        raise GatewayError(404, f"adapter '{name}' is not loaded", param="name", code="adapter_not_found")
    try:
        r = await state.client.post(f"{state.cfg.upstream_url}/v1/unload_lora_adapter", json={"lora_name": name},
                                    headers=state.upstream_headers())
    except httpx.HTTPError as exc:
        raise GatewayError(503, f"upstream unavailable ({type(exc).__name__})", code="upstream_unavailable",
                           headers={"Retry-After": "5"}) from None
    if r.status_code >= 400 and r.status_code != 404:
        raise GatewayError(502, f"vLLM refused to unload '{name}': {r.text[:300]}", code="adapter_unload_failed")
    del state.adapters[name]
    return {"unloaded": name, "routes": state.routing_table()}


async def add_candidate(state: GatewayState, name: str) -> dict:
    if name in (state.cfg.router.virtual_model, *state.known_models()):
        raise GatewayError(400, f"'name': '{name}' is already a served model", param="name", code="invalid_value")
    try:
        r = await state.client.get(f"{state.cfg.upstream_url}/v1/models", headers=state.upstream_headers())
        served = {m.get("id") for m in r.json().get("data", [])} if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        served = None
    if served is None:
        raise GatewayError(503, "upstream unavailable: cannot check that vLLM serves the candidate", code="upstream_unavailable",
                           headers={"Retry-After": "5"})
    if name not in served:
        raise GatewayError(400, f"vLLM does not serve '{name}': load the adapter into vLLM first", param="name",
                           code="candidate_not_loaded")
    state.candidates.add(name)
    return {"candidate": name}


def remove_candidate(state: GatewayState, name: str) -> dict:
    if name not in state.candidates:
        raise GatewayError(404, f"'{name}' is not a candidate", param="name", code="candidate_not_found")
    state.candidates.discard(name)
    return {"removed": name}
