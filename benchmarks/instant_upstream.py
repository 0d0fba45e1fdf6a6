"""A minimal OpenAI-compatible responder that answers instantly: isolates the gateway's own cost.

Plain ASGI (no framework), fixed bodies; serves /health, /v1/models, /v1/chat/completions, /v1/completions and
/v1/responses, streaming or not, and keeps no stored responses (GET /v1/responses/ID is a 404, as from a vLLM
without its response store). Run: python -m benchmarks.instant_upstream PORT
"""

from __future__ import annotations

import json
import sys

_CHAT = json.dumps({
    "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": "MODEL",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
}).encode()
_CHUNK = (b'data: {"id":"chatcmpl-instant","object":"chat.completion.chunk","created":0,"model":"MODEL",'
          b'"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":null}]}\n\n')
_DONE = b"data: [DONE]\n\n"
_RESPONSE = {
    "id": "resp_instant", "object": "response", "created_at": 0, "model": "MODEL", "status": "completed",
    "output": [{"id": "msg_instant", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}]}],
    "usage": {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6},
}
_RESPONSE_BODY = json.dumps(_RESPONSE).encode()
_RESPONSE_EVENTS = (
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":"msg_instant",'
    b'"output_index":0,"content_index":0,"delta":"ok","sequence_number":0}\n\n'
    b"event: response.completed\ndata: " + json.dumps({"type": "response.completed", "sequence_number": 1,
                                                       "response": _RESPONSE}).encode() + b"\n\n")
_NOT_STORED = (b'{"error":{"message":"Response not found.","type":"invalid_request_error","param":"response_id",'
               b'"code":404}}')


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    path = scope["path"]
    status = 200
    if path.endswith("/completions") or path == "/v1/responses":
        model = b"base"
        try:
            req = json.loads(body)
            model = str(req.get("model", "base")).encode()
            stream = bool(req.get("stream"))
        except ValueError:
            stream = False
        chat = path != "/v1/responses"
        if stream:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            if chat:
                await send({"type": "http.response.body", "body": _CHUNK.replace(b"MODEL", model), "more_body": True})
                await send({"type": "http.response.body", "body": _DONE})
            else:
                await send({"type": "http.response.body", "body": _RESPONSE_EVENTS.replace(b"MODEL", model)})
            return
        out = (_CHAT if chat else _RESPONSE_BODY).replace(b"MODEL", model)
    elif path.startswith("/v1/responses/"):
        status, out = 404, _NOT_STORED
    elif path == "/v1/models":
        out = b'{"object":"list","data":[]}'
    else:
        out = b"{}"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
