"""Gateway front-door limits with no upstream running: body size and time limits, and a clean 503."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from conftest import ThreadedGateway, free_port


@pytest.fixture(scope="module")
def lone_gateway(example_router):
    from gateway.app import create_app
    from gateway.config import RouterConfig, RoutesConfig, Secrets

    cfg = RoutesConfig(router=RouterConfig(path=example_router))
    cfg.gateway.port, cfg.vllm.port, cfg.gateway.body_timeout = free_port(), free_port(), 2.0
    with ThreadedGateway(create_app(cfg, Secrets(_env_file=None)), "127.0.0.1", cfg.gateway.port) as gw:
        gw.port = cfg.gateway.port
        yield gw


def test_chunked_oversized_body_gets_413(lone_gateway):
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    r = httpx.post(f"{lone_gateway.url}/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_never_finished_body_gets_408(lone_gateway):
    with socket.create_connection(("127.0.0.1", lone_gateway.port), timeout=20) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"model\"")
        t = time.monotonic()
        head = s.recv(1000)
    assert head.startswith(b"HTTP/1.1 408") and time.monotonic() - t < 10


@pytest.mark.parametrize("body, field, code", [
    (b'{"model": "auto", "messages": [{"role": "user", "content": "caf\xe9"}]}', None, "invalid_encoding"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "a \\ud800 clause"}]}', "messages[0].content",
     "invalid_value"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\uDC00"}]}]}',
     "messages[0].content[0].text", "invalid_value"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "ok"}], "user": "x\\udbff"}', "user", "invalid_value"),
])
def test_a_body_that_is_not_text_is_a_400_naming_the_field(lone_gateway, body, field, code):
    # not UTF-8, or a JSON string holding a lone surrogate: no tokenizer takes it, so it is refused at the door
    # (the openai client cannot even send one: it encodes its JSON as UTF-8)
    r = httpx.post(f"{lone_gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == code and err["param"] == field, r.text
    assert (field or "not valid UTF-8") in err["message"] and "\n" not in err["message"]
    assert r.headers.get("connection") != "close"  # the body was read whole: the connection stays usable


def test_a_body_nested_thousands_deep_is_a_400_not_a_500(lone_gateway):
    head = b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "x": '
    for inner in (b"", b'"\\ud800"'):  # too deep for Python's JSON parser, with and without a surrogate
        body = head + b"[" * 5000 + inner + b"]" * 5000 + b"}"
        r = httpx.post(f"{lone_gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text[:300]
        assert "nested too deeply" in r.json()["error"]["message"]
    # deep enough to name, not too deep to parse: the field's path is cut to 100 characters
    body = head + b"[" * 500 + b'"\\ud800"' + b"]" * 500 + b"}"
    r = httpx.post(f"{lone_gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"].startswith("x[0][0]") and len(err["param"]) == 100, r.text[:300]


def test_an_emoji_written_as_a_surrogate_pair_is_text(lone_gateway):
    # two escapes that make one character pass the check and are routed; the missing upstream answers 503
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "contract \\ud83d\\ude00 breach"}]}'
    r = httpx.post(f"{lone_gateway.url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable", r.text


def test_upstream_down_is_503_with_retry_after_and_not_ready(lone_gateway):
    r = httpx.post(f"{lone_gateway.url}/v1/chat/completions",
                   json={"model": "auto", "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "upstream_unavailable"
    r = httpx.get(f"{lone_gateway.url}/ready")
    assert r.status_code == 503 and r.json() == {"ready": False, "router": True, "upstream": False}


@pytest.mark.parametrize("path, body, field, says", [
    # a wrong part inside a list: the part's field is named, not the union's string branch ('content.str')
    ("chat/completions", {"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text", "Input should be a valid string"),
    # no branch fits at all: every branch is said
    ("chat/completions", {"model": "auto", "messages": [{"role": "user", "content": 5}]},
     "messages[0].content", "Input should be a valid string or a valid list"),
    ("chat/completions", {"model": "auto", "messages": [{"role": "user", "content": "x"}], "logprobs": "many"},
     "logprobs", "Input should be a valid boolean or a valid integer"),
    ("responses", {"model": "auto", "input": [{"role": "robot", "content": "x"}]}, "input[0].role", "'user'"),
    ("responses", {"model": "auto", "input": 5}, "input", "Input should be a valid string or a valid list"),
    ("responses", {"model": "auto", "input": "x", "max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
    ("responses", {"model": "auto"}, "input", "'input' is required"),
])
def test_a_wrong_field_inside_a_union_is_named_exactly(lone_gateway, path, body, field, says):
    r = httpx.post(f"{lone_gateway.url}/v1/{path}", json=body)
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == field and says in err["message"], r.text
    assert err["message"].startswith(f"'{field}'") and "\n" not in err["message"]


def test_responses_are_routed_before_the_missing_upstream_answers(lone_gateway):
    # the Responses API reaches the router (its route is in the headers) and the upstream call: 503, not 404
    r = httpx.post(f"{lone_gateway.url}/v1/responses", json={"model": "auto", "input": "Is a verbal agreement binding?"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable", r.text
    assert r.headers["x-forgetless-route"] == "legal"
    r = httpx.get(f"{lone_gateway.url}/v1/responses/resp_1")
    assert r.status_code == 503 and r.json()["error"]["code"] == "upstream_unavailable", r.text
    r = httpx.get(f"{lone_gateway.url}/v1/responses/resp_1", params={"starting_after": "-1"})
    err = r.json()["error"]  # a query parameter is named as the client wrote it, like a body field
    assert r.status_code == 400 and err["param"] == "starting_after" and err["message"].startswith("'starting_after'"), r.text
