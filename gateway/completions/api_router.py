from fastapi import APIRouter, Depends, Request

from gateway.auth import require_client_key
from gateway.completions.serving import serve_completion
from gateway.protocol import CompletionRequest

router = APIRouter(tags=["openai"])


@router.post("/v1/completions", dependencies=[Depends(require_client_key)])
async def create_completion(body: CompletionRequest, request: Request):
    """OpenAI (legacy) completions, routed on the prompt text."""
    return await serve_completion(request, body)
