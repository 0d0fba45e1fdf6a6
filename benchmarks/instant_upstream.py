"""A minimal OpenAI-compatible responder that answers instantly: isolates the gateway's own cost.

Plain ASGI (no framework), fixed bodies; serves /health, /v1/models, /v1/chat/completions and
/v1/completions, streaming or not. Run: python -m benchmarks.instant_upstream PORT
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
    if path.endswith("/completions"):
        model = b"base"
        try:
            req = json.loads(body)
            model = str(req.get("model", "base")).encode()
            stream = bool(req.get("stream"))
        except ValueError:
            stream = False
        if stream:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
            await send({"type": "http.response.body", "body": _CHUNK.replace(b"MODEL", model), "more_body": True})
            await send({"type": "http.response.body", "body": _DONE})
            return
        out = _CHAT.replace(b"MODEL", model)
    elif path == "/v1/models":
        out = b'{"object":"list","data":[]}'
    else:
        out = b"{}"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
