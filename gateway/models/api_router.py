from fastapi import APIRouter, Depends, Request

from gateway.auth import require_client_key
from gateway.models.serving import list_models, retrieve_model

router = APIRouter(tags=["openai"])


@router.get("/v1/models", dependencies=[Depends(require_client_key)])
async def models(request: Request):
    """The virtual model (with its routing table), the base model and every adapter."""
    return list_models(request.app.state.gateway)


@router.get("/v1/models/{model:path}", dependencies=[Depends(require_client_key)])
async def model(model: str, request: Request):
    """One of the listed models (`client.models.retrieve`); any other name is a 404."""
    return retrieve_model(request.app.state.gateway, model)
