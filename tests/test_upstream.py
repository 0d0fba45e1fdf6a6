"""The gateway's upstream client (httpx API on aiohttp's pool): failures keep their kind, because the proxy answers
a timeout with 504 but retries a refused or dropped connection on the base model (then 503)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from conftest import free_port

from gateway.upstream import upstream_client


async def _call(url: str, read: float = 5.0, stream: bool = False) -> bytes:
    async with upstream_client(httpx.Timeout(connect=2.0, read=read, write=2.0, pool=2.0), 8) as client:
        if not stream:
            return (await client.post(url, json={"x": 1})).content
        async with client.stream("POST", url, json={"x": 1}) as r:
            return b"".join([c async for c in r.aiter_raw()])


def _against(handler, **call) -> bytes:
    """One request through the upstream client to a raw TCP server whose connections `handler` answers."""
    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            return await _call(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions", **call)

    return asyncio.run(main())


def test_refused_connection_is_a_connect_error_not_a_timeout():
    with pytest.raises(httpx.ConnectError):
        asyncio.run(_call(f"http://127.0.0.1:{free_port()}/v1/chat/completions"))


def test_dropped_connection_is_a_protocol_error_not_a_timeout():
    async def hang_up(reader, writer):
        await reader.read(100)
        writer.close()

    with pytest.raises(httpx.RemoteProtocolError):
        _against(hang_up)


def test_silent_upstream_is_a_read_timeout():
    async def silent(reader, writer):
        await asyncio.sleep(5)

    with pytest.raises(httpx.ReadTimeout):
        _against(silent, read=0.5)


def test_stream_cut_mid_body_is_an_http_error_not_a_timeout():
    async def cut(reader, writer):
        await reader.read(1000)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"10\r\ndata: {\"a\": 1}\n\n\r\n")
        await writer.drain()
        writer.close()

    with pytest.raises(httpx.HTTPError) as info:
        _against(cut, stream=True)
    assert not isinstance(info.value, httpx.TimeoutException)  # the gateway reports "interrupted", not "timed out"


def test_answers_pass_through_unchanged():
    body = b'{"id": "x", "choices": []}'

    async def ok(reader, writer):
        await reader.read(1000)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    assert _against(ok) == body


def test_a_cookie_set_upstream_is_not_sent_on_later_requests():
    """One client serves every caller: a Set-Cookie from the upstream must not reach other callers' requests."""
    seen = []

    async def cookie_setter(reader, writer):
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = int(next((ln.split(b":")[1] for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length")), b"0"))
            await reader.readexactly(length)
            seen.append(head.lower())
            writer.write(b"HTTP/1.1 200 OK\r\nset-cookie: session=alice; Path=/\r\ncontent-type: application/json\r\n"
                         b"content-length: 2\r\n\r\n{}")
            await writer.drain()
            if len(seen) == 2:
                break
        writer.close()

    async def main():
        server = await asyncio.start_server(cookie_setter, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
        async with server, upstream_client(httpx.Timeout(5.0), 8) as client:
            first = await client.post(url, json={"x": 1})
            await client.post(url, json={"x": 2})
        return first

    first = asyncio.run(main())
    assert first.headers["set-cookie"].startswith("session=alice")  # the caller still sees it
    assert len(seen) == 2 and not any(b"cookie:" in h for h in seen)
