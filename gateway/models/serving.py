import time

from gateway.errors import GatewayError
from gateway.state import GatewayState

_CREATED = int(time.time())


def list_models(state: GatewayState) -> dict:
    cfg = state.cfg
    data = [{
        "id": cfg.router.virtual_model, "object": "model", "created": _CREATED, "owned_by": "forgetless",
        "parent": None,
        "forgetless": {"kind": "router", "fallback": state.router.fallback if state.router else cfg.router.fallback,
                       "routes": state.routing_table(),
                       "audited": bool(state.table), "selection": cfg.router.selection,
                       "flagged": state.table.flagged,
                       "sure_only": {r: {"model": m, "min_probability": state.table.sure_threshold(r, state.router_fp)}
                                     for r, m in state.table.sure.items() if m in state.adapters}},
    }, {
        "id": state.base, "object": "model", "created": _CREATED, "owned_by": "forgetless", "parent": None,
        "forgetless": {"kind": "base"},
    }]
    for a in state.adapters.values():
        data.append({"id": a.name, "object": "model", "created": _CREATED, "owned_by": "forgetless", "parent": state.base,
                     "forgetless": {"kind": "adapter", "description": a.description}})
    return {"object": "list", "data": data}


def retrieve_model(state: GatewayState, name: str) -> dict:
    for entry in list_models(state)["data"]:
        if entry["id"] == name:
            return entry
    raise GatewayError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
