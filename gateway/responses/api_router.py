from typing import Optional

from fastapi import APIRouter, Depends, Query, Request

from gateway.auth import require_client_key
from gateway.protocol import ResponsesRequest
from gateway.responses.serving import pass_stored, serve_response

router = APIRouter(tags=["openai"])


@router.post("/v1/responses", dependencies=[Depends(require_client_key)])
async def create_response(body: ResponsesRequest, request: Request):
    """OpenAI Responses API, routed on `instructions` and the input's user messages like a chat."""
    return await serve_response(request, body)


@router.get("/v1/responses/{response_id}", dependencies=[Depends(require_client_key)])
async def retrieve_response(response_id: str, request: Request, stream: bool = False,
                            starting_after: Optional[int] = Query(None, ge=0)):
    """A response vLLM stored (its store is off unless VLLM_ENABLE_RESPONSES_API_STORE=1 is set for it);
    `stream=true` replays its events, from `starting_after` on."""
    return await pass_stored(request, response_id, params={"stream": stream, "starting_after": starting_after})


@router.post("/v1/responses/{response_id}/cancel", dependencies=[Depends(require_client_key)])
async def cancel_response(response_id: str, request: Request):
    """Cancel a background response vLLM holds."""
    return await pass_stored(request, response_id, "/cancel")
