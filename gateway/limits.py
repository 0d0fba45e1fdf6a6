"""ASGI middleware: refuse request bodies over the configured size with 413, before reading them whole."""

from __future__ import annotations

import json

from gateway.errors import error_body


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.max_bytes
                except ValueError:
                    return await self._reject(send, 400, "invalid Content-Length header")
                if too_big:
                    return await self._reject(send, 413, f"request body over the {self.max_bytes}-byte limit")
        seen = 0
        rejected = False

        async def limited_receive():
            nonlocal seen, rejected
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    rejected = True
                    raise _TooLarge()
            return msg

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send, 413, f"request body over the {self.max_bytes}-byte limit")

    @staticmethod
    async def _reject(send, status: int, message: str):
        body = json.dumps(error_body(status, message, code="request_too_large" if status == 413 else "invalid_request")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
