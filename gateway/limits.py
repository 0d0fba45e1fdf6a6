"""ASGI middleware: read each request body up front, within a size limit (413) and a time limit (408).

Buffering is cheap at the gateway's 1 MiB default, and it answers an oversized or stalled body before any
endpoint sees it, whether the client sent Content-Length or chunked encoding.
"""

from __future__ import annotations

import asyncio
import json

from gateway.errors import error_body


class BodyLimit:
    def __init__(self, app, max_bytes: int, timeout: float = 30.0):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.max_bytes
                except ValueError:
                    return await self._reject(send, 400, "invalid Content-Length header", "invalid_request")
                if too_big:
                    return await self._reject(send, 413, f"request body over the {self.max_bytes}-byte limit", "request_too_large")
        chunks, seen, more = [], 0, True
        try:
            async with asyncio.timeout(self.timeout):  # one deadline for the whole body, no task per receive
                while more:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    body = msg.get("body", b"")
                    seen += len(body)
                    if seen > self.max_bytes:
                        break
                    chunks.append(body)
                    more = msg.get("more_body", False)
        except TimeoutError:
            return await self._reject(send, 408, f"request body not received within {self.timeout:g} s", "request_timeout")
        if seen > self.max_bytes:
            return await self._reject(send, 413, f"request body over the {self.max_bytes}-byte limit", "request_too_large")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later: disconnect notices while a response streams

        await self.app(scope, replay, send)

    @staticmethod
    async def _reject(send, status: int, message: str, code: str):
        body = json.dumps(error_body(status, message, code=code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
