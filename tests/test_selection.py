"""What text the router reads from a request, under each policy."""

from __future__ import annotations

from gateway.config import RouterConfig
from gateway.selection import chat_routing_text, completion_routing_text, responses_routing_text

MSGS = [
    {"role": "system", "content": "You are a contracts assistant."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": [{"type": "text", "text": "look at this"}, {"type": "image_url", "image_url": {"url": "x"}},
                                 {"type": "text", "text": "clause"}]},
]


def test_last_user_policy_reads_text_parts_only():
    assert chat_routing_text(MSGS, RouterConfig(path="r")) == "look at this\nclause"


def test_system_and_last_k_policy():
    cfg = RouterConfig(path="r", policy="system_and_last_k", last_k=2)
    assert chat_routing_text(MSGS, cfg) == "You are a contracts assistant.\nfirst question\nlook at this\nclause"
    cfg1 = RouterConfig(path="r", policy="system_and_last_k", last_k=1)
    assert chat_routing_text(MSGS, cfg1) == "You are a contracts assistant.\nlook at this\nclause"


def test_completion_prompts():
    assert completion_routing_text("def f():") == "def f():"
    assert completion_routing_text(["a", "b"]) == "a"
    assert completion_routing_text([1, 2, 3]) == ""  # token ids: read through vLLM (test_completions_split.py)


def test_responses_input_read_like_a_chat():
    last, sys_k = RouterConfig(path="r"), RouterConfig(path="r", policy="system_and_last_k", last_k=2)
    assert responses_routing_text({"input": "a clause"}, last) == "a clause"
    body = {"instructions": "You review contracts.", "input": [
        {"role": "user", "content": "first question"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "an answer"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "tool text is not read"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "look at this"},
                                                         {"type": "input_image", "image_url": "x"}]},
    ]}
    assert responses_routing_text(body, last) == "look at this"
    assert responses_routing_text(body, sys_k) == "You review contracts.\nfirst question\nlook at this"
    # instructions are a system prompt: the last-user policy does not read them
    assert responses_routing_text({"instructions": "You review contracts.", "input": []}, last) == ""
