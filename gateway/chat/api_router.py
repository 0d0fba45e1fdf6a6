from fastapi import APIRouter, Depends, Request

from gateway.auth import require_client_key
from gateway.chat.serving import serve_chat
from gateway.protocol import ChatCompletionRequest

router = APIRouter(tags=["openai"])


@router.post("/v1/chat/completions", dependencies=[Depends(require_client_key)])
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    """OpenAI chat completions; `model` = the virtual model routes, a base/adapter name goes there directly."""
    return await serve_chat(request, body)
