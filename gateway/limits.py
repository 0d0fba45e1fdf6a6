"""ASGI middleware: read each request body up front, within a size limit (413) and a time limit (408), and
refuse one that is not text (400): bytes that are not UTF-8, or a JSON string with a lone surrogate escape.

Buffering is cheap at the gateway's 1 MiB default, and it answers an oversized or stalled body before any
endpoint sees it, whether the client sent Content-Length or chunked encoding.
"""

from __future__ import annotations

import asyncio
import json

from classifier.data import ESCAPED_SURROGATE, surrogate_field
from gateway.errors import error_body


def text_problem(raw: bytes) -> tuple[str, str | None] | None:
    """Why a request body is not JSON text an endpoint can use, with the field at fault, or None when it is.
    JSON travels as UTF-8 (RFC 8259), and a string with a lone UTF-16 surrogate (`"\\ud800"`) is valid JSON
    but no text: the router's tokenizer refuses it (Hugging Face `tokenizers`, as vLLM's models use). Costs a
    scan of the bytes; the parse only happens for a body that has a surrogate escape at all (emoji written as
    escape pairs pass)."""
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"request body is not valid UTF-8 (byte {exc.start}: 0x{raw[exc.start]:02x})", None
    if ESCAPED_SURROGATE.search(raw):
        try:
            where = surrogate_field(json.loads(raw))
        except (ValueError, RecursionError):
            return None  # the endpoint's own parser names the JSON error
        if where is not None:
            return f"'{where}': not valid Unicode (a lone surrogate in a \\u escape)", where
    return None


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
        raw = b"".join(chunks)
        if (problem := text_problem(raw)) is not None:
            message, field = problem
            return await self._reject(send, 400, message, "invalid_encoding" if field is None else "invalid_value",
                                      param=field, close=False)  # the body was read whole: keep the connection
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()  # later: disconnect notices while a response streams

        await self.app(scope, replay, send)

    @staticmethod
    async def _reject(send, status: int, message: str, code: str, param: str | None = None, close: bool = True):
        body = json.dumps(error_body(status, message, param=param, code=code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"connection", b"close")] if close else headers})
        await send({"type": "http.response.body", "body": body})
