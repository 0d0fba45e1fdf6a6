"""The gateway's upstream client (httpx API on aiohttp's pool): failures keep their kind, because the proxy answers
a timeout with 504 but retries a refused or dropped connection on the base model (then 503)."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from gateway.upstream import upstream_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _serve(handler) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _call(url: str, read: float = 5.0, stream: bool = False) -> bytes:
    async with upstream_client(httpx.Timeout(connect=2.0, read=read, write=2.0, pool=2.0), 8) as client:
        if not stream:
            return (await client.post(url, json={"x": 1})).content
        async with client.stream("POST", url, json={"x": 1}) as r:
            return b"".join([c async for c in r.aiter_raw()])


def test_refused_connection_is_a_connect_error_not_a_timeout():
    with pytest.raises(httpx.ConnectError):
        asyncio.run(_call(f"http://127.0.0.1:{_free_port()}/v1/chat/completions"))


def test_dropped_connection_is_a_protocol_error_not_a_timeout():
    async def main():
        async def hang_up(reader, writer):
            await reader.read(100)
            writer.close()

        server, port = await _serve(hang_up)
        async with server:
            await _call(f"http://127.0.0.1:{port}/v1/chat/completions")

    with pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(main())


def test_silent_upstream_is_a_read_timeout():
    async def main():
        async def silent(reader, writer):
            await asyncio.sleep(5)

        server, port = await _serve(silent)
        async with server:
            await _call(f"http://127.0.0.1:{port}/v1/chat/completions", read=0.5)

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(main())


def test_stream_cut_mid_body_is_an_http_error_naming_the_cause():
    async def main():
        async def cut(reader, writer):
            await reader.read(1000)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"10\r\ndata: {\"a\": 1}\n\n\r\n")
            await writer.drain()
            writer.close()

        server, port = await _serve(cut)
        async with server:
            await _call(f"http://127.0.0.1:{port}/v1/chat/completions", stream=True)

    with pytest.raises(httpx.HTTPError) as info:
        asyncio.run(main())
    assert not isinstance(info.value, httpx.TimeoutException)  # the gateway reports "interrupted", not "timed out"


def test_answers_pass_through_unchanged():
    async def main():
        async def ok(reader, writer):
            await reader.read(1000)
            body = b'{"id": "x", "choices": []}'
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        server, port = await _serve(ok)
        async with server:
            return await _call(f"http://127.0.0.1:{port}/v1/completions")

    assert asyncio.run(main()) == b'{"id": "x", "choices": []}'
