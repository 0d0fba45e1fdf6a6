"""Forward one OpenAI request to vLLM: retry once on the base model when the chosen adapter fails before any
byte reached the client, relay SSE streams chunk by chunk, and say what happened in response headers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from gateway.errors import error_body, error_response, upstream_error_body
from gateway.responses.background import RESPONSE_ID, hold_while_running, watch_response
from gateway.state import GatewayState, Target
from gateway.upstream_gate import computes_prompt_logprobs

log = logging.getLogger("forgetless.gateway")
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive", "server", "date"}


#: usage fields -> the tokens metric's kind: chat and completions say prompt/completion, the Responses API input/output
_USAGE_KINDS = (("prompt_tokens", "prompt"), ("completion_tokens", "completion"),
                ("input_tokens", "prompt"), ("output_tokens", "completion"))


def stream_error(endpoint: str, status: int, message: str, code: str) -> bytes:
    """The event that ends a relayed stream on a failure. OpenAI's client raises APIError on a data line with an
    `error` object; a Responses stream also says `event: error` with the fields of its error event."""
    err = error_body(status, message, code=code)
    if endpoint == "responses":
        doc = {"type": "error", "code": code, "message": message, "param": None, **err}
        return f"event: error\ndata: {json.dumps(doc)}\n\n".encode()
    return f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()


def result_headers(target: Target, request_id: str) -> dict[str, str]:
    h = {"x-request-id": request_id, "x-forgetless-model": target.model}
    if target.route is not None:
        h["x-forgetless-route"] = target.route
    if target.confidence is not None:
        h["x-forgetless-confidence"] = f"{target.confidence:.4f}"
    if target.router_ms is not None:
        h["x-forgetless-router-ms"] = f"{target.router_ms:.3f}"
    if target.fallback:
        h["x-forgetless-fallback"] = target.fallback
    if target.forced:
        h["x-forgetless-forced"] = "true"
    return h


def _retryable(status: int, body: bytes) -> bool:
    """An adapter-side failure worth retrying on the base: 5xx, or vLLM not knowing the model it was asked for
    ("The model `x` does not exist": an adapter unloaded behind the gateway's back). Other 404s are the client's,
    e.g. a Responses request's `previous_response_id` that vLLM does not have ("... not found")."""
    return status >= 500 or (status == 404 and b"does not exist" in body)


class Proxy:
    def __init__(self, state: GatewayState, endpoint: str):
        self.state, self.endpoint = state, endpoint

    @property
    def url(self) -> str:
        return f"{self.state.cfg.upstream_url}/v1/{self.endpoint}"

    async def __call__(self, request: Request, body: dict, target: Target, routing_text: str,
                       request_id: str | None = None) -> Response:
        request_id = request_id or request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        started = time.perf_counter()
        exclusive = self.state.cfg.gateway.exclusive_prompt_logprobs and computes_prompt_logprobs(body)
        try:
            release = await self.state.gate.enter(exclusive, self.state.cfg.gateway.timeouts.first_token)
        except asyncio.TimeoutError:
            why = ("the upstream did not become free for a request that computes prompt logprobs (sent alone)" if exclusive
                   else "waited too long behind a request that computes prompt logprobs")
            return self._fail(request, target, request_id, started, 503, why, "upstream_busy", routing_text, retry_after=True)
        if exclusive:
            self.state.metrics.exclusive.inc()
        background = self.endpoint == "responses" and body.get("background") is True
        handed_over = False
        try:
            resp = await self._forward(request, body, target, routing_text, request_id, started, release, background)
            # a relayed stream releases its hold when it ends, a background response when vLLM has finished it
            handed_over = isinstance(resp, StreamingResponse) or (
                background and resp.status_code == 200 and hold_while_running(self.state, resp.body, release))
            return resp
        finally:
            if not handed_over:
                await release()

    async def _forward(self, request: Request, body: dict, target: Target, routing_text: str, request_id: str,
                       started: float, release, background: bool) -> Response:
        stream = bool(body.get("stream"))
        attempts = [target.model] if target.model == self.state.base or target.exact else [target.model, self.state.base]
        last: tuple[int, bytes] | None = None
        for i, model in enumerate(attempts):
            if i:  # retry on the base model
                target.fallback = "upstream-error"
                self.state.metrics.fallbacks.labels(target.route or model, "upstream-error").inc()
                target.model = model
            payload = {**body, "model": model}
            try:
                if stream:
                    resp = await self._open_stream(payload)
                else:
                    resp = await asyncio.wait_for(self._post(payload), self.state.cfg.gateway.timeouts.total)
            except (httpx.TimeoutException, asyncio.TimeoutError):
                return self._fail(request, target, request_id, started, 504, "upstream timed out", "upstream_timeout", routing_text)
            except httpx.HTTPError as exc:
                last = (503, f"upstream unavailable ({type(exc).__name__})".encode())
                continue
            detail = b"" if resp.status_code < 400 else await self._peek(resp, stream)
            if resp.status_code < 400 or not _retryable(resp.status_code, detail):
                if stream and resp.status_code == 200:
                    return self._relay(request, resp, target, request_id, started, routing_text, release, background)
                return await self._finish(request, resp, target, request_id, started, stream, routing_text)
            last = (resp.status_code, detail)
            if stream:
                await resp.aclose()
        status, detail = last or (503, b"upstream unavailable")
        if status >= 500 and not detail.startswith(b"{"):
            return self._fail(request, target, request_id, started, 503, detail.decode(errors="replace"), "upstream_unavailable",
                              routing_text, retry_after=True)
        return self._passthrough_error(request, target, request_id, started, status, detail, routing_text)

    # ---- upstream calls -------------------------------------------------------------------------
    async def _post(self, payload: dict) -> httpx.Response:
        return await self.state.client.post(self.url, json=payload, headers=self.state.upstream_headers())

    async def _open_stream(self, payload: dict) -> httpx.Response:
        req = self.state.client.build_request("POST", self.url, json=payload, headers=self.state.upstream_headers())
        return await self.state.client.send(req, stream=True)

    @staticmethod
    async def _peek(resp: httpx.Response, stream: bool) -> bytes:
        if stream and not resp.is_stream_consumed:
            await resp.aread()
        return resp.content

    # ---- responses ------------------------------------------------------------------------------
    def _log(self, request: Request, target: Target, request_id: str, started: float, status: int, stream: bool,
             routing_text: str, completion: str | None = None, error: str | None = None) -> None:
        total = (time.perf_counter() - started) * 1000.0
        route = target.route or target.model
        self.state.metrics.requests.labels(self.endpoint, route, target.model, str(status)).inc()
        extra = {"request_id": request_id, "method": request.method, "path": request.url.path, "status": status,
                 "route": target.route, "model": target.model, "fallback": target.fallback, "confidence": target.confidence,
                 "router_ms": target.router_ms, "total_ms": round(total, 2), "stream": stream}
        if error:
            extra["error"] = error
        if self.state.cfg.gateway.log_content:
            extra["prompt"] = routing_text
            if completion is not None:
                extra["completion"] = completion
        log.info("request", extra=extra)

    def _count_usage(self, route: str, usage: dict | None) -> None:
        if isinstance(usage, dict):
            for kind, label in _USAGE_KINDS:
                if isinstance(usage.get(kind), int):
                    self.state.metrics.tokens.labels(route, label).inc(usage[kind])

    async def _finish(self, request, resp: httpx.Response, target, request_id, started, stream, routing_text) -> Response:
        content = resp.content
        route = target.route or target.model
        self.state.metrics.upstream_s.labels(route).observe(time.perf_counter() - started)
        completion = None
        if resp.status_code == 200:
            try:
                doc = json.loads(content)
                self._count_usage(route, doc.get("usage"))
                if self.state.cfg.gateway.log_content:
                    completion = json.dumps(doc.get("choices", doc.get("output")))[:4000]
            except ValueError:
                pass
        else:
            self.state.metrics.errors.labels(route, f"upstream_{resp.status_code}").inc()
        if target.fallback:
            self.state.metrics.fallbacks.labels(route, target.fallback).inc()
        self._log(request, target, request_id, started, resp.status_code, stream, routing_text, completion)
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
        headers.update(result_headers(target, request_id))
        if resp.status_code >= 400:  # vLLM's refusal, in OpenAI's shape and on one line
            headers.pop("content-type", None)
            return JSONResponse(upstream_error_body(resp.status_code, content), status_code=resp.status_code, headers=headers)
        return Response(content, status_code=resp.status_code, headers=headers, media_type=resp.headers.get("content-type"))

    def _relay(self, request, resp: httpx.Response, target, request_id, started, routing_text, release,
               background: bool = False) -> StreamingResponse:
        """Relay an SSE stream. A background response's stream hands its hold to a watcher at the end, as the
        response may run on in vLLM after the client stopped reading (gateway/responses/background.py)."""
        state, route = self.state, target.route or target.model
        if target.fallback:
            state.metrics.fallbacks.labels(route, target.fallback).inc()

        total = state.cfg.gateway.timeouts.total

        response_id = None
        settled = False

        async def settle() -> None:
            """End this request's hold on the upstream gate, once: now, or when vLLM has finished the background
            response this stream belongs to."""
            nonlocal settled
            if settled:
                return
            settled = True
            if response_id:
                watch_response(state, response_id, release)
            else:
                await release()

        async def body():
            nonlocal response_id
            first = True
            status = 200
            try:
                async for chunk in resp.aiter_raw():
                    if background and response_id is None and (found := RESPONSE_ID.search(chunk)):
                        response_id = found.group(1).decode()
                    if time.perf_counter() - started > total:  # the whole stream is over its time budget
                        status = 504
                        state.metrics.errors.labels(route, "upstream_timeout").inc()
                        yield stream_error(self.endpoint, 504, f"stream exceeded the {total:g} s total timeout", "upstream_timeout")
                        return
                    if first:
                        state.metrics.ttft_s.labels(route).observe(time.perf_counter() - started)
                        first = False
                    if b'"usage":{' in chunk or b'"usage": {' in chunk:
                        self._usage_from_sse(route, chunk)
                    yield chunk
            except httpx.HTTPError as exc:  # upstream died mid-stream: end the client's stream with an error event
                status = 502
                state.metrics.errors.labels(route, "stream_interrupted").inc()
                yield stream_error(self.endpoint, 502, f"upstream stream interrupted ({type(exc).__name__})", "upstream_stream_error")
            finally:
                await resp.aclose()  # on client disconnect too: closing the connection aborts the vLLM request
                await settle()
                state.metrics.upstream_s.labels(route).observe(time.perf_counter() - started)
                self._log(request, target, request_id, started, status, True, routing_text)

        headers = result_headers(target, request_id)
        headers.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
        # the body's `finally` settles the hold; the background task too, in case the body never starts
        return StreamingResponse(body(), status_code=200, media_type="text/event-stream", headers=headers,
                                 background=BackgroundTask(settle))

    def _usage_from_sse(self, route: str, chunk: bytes) -> None:
        for line in chunk.split(b"\n"):
            if line.startswith(b"data: {") and b'"usage"' in line:
                try:
                    doc = json.loads(line[6:])
                except ValueError:
                    continue
                if isinstance(doc, dict):  # the Responses API gives usage in its response.completed event
                    usage = doc.get("usage") or (doc.get("response") or {}).get("usage")
                    self._count_usage(route, usage)

    def _fail(self, request, target, request_id, started, status, message, code, routing_text, retry_after=False) -> Response:
        route = target.route or target.model
        self.state.metrics.errors.labels(route, code).inc()
        self._log(request, target, request_id, started, status, False, routing_text, error=code)
        headers = result_headers(target, request_id)
        if retry_after:
            headers["Retry-After"] = "5"
        return error_response(status, message, code=code, headers=headers)

    def _passthrough_error(self, request, target, request_id, started, status, detail: bytes, routing_text) -> Response:
        route = target.route or target.model
        self.state.metrics.errors.labels(route, f"upstream_{status}").inc()
        self._log(request, target, request_id, started, status, False, routing_text, error=f"upstream_{status}")
        return JSONResponse(upstream_error_body(status, detail), status_code=status, headers=result_headers(target, request_id))
