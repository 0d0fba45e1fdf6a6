"""What text the router reads from a request, under each policy."""

from __future__ import annotations

import pytest

from gateway.config import RouterConfig
from gateway.selection import chat_routing_text, completion_routing_text, prompt_routing_text, responses_routing_text

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
    cfg = RouterConfig(path="r")
    assert completion_routing_text("def f():", cfg) == "def f():"
    assert completion_routing_text(["a", "b"], cfg) == "a"
    assert completion_routing_text([1, 2, 3], cfg) == ""  # token ids: read through vLLM (test_completions_split.py)


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


SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_FORMATS = {
    "chatml": f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n<|im_start|>user\nfirst question<|im_end|>\n"
              "<|im_start|>assistant\nan answer<|im_end|>\n<|im_start|>user\nIs this clause void?<|im_end|>\n"
              "<|im_start|>assistant\n",
    "llama3": f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SMOL_SYSTEM}<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nfirst question<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nan answer<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nIs this clause void?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma": f"<bos><start_of_turn>system\n{SMOL_SYSTEM}<end_of_turn>\n<start_of_turn>user\nfirst question<end_of_turn>\n"
             "<start_of_turn>model\nan answer<end_of_turn>\n<start_of_turn>user\nIs this clause void?<end_of_turn>\n"
             "<start_of_turn>model\n",
    "phi3": f"<|system|>\n{SMOL_SYSTEM}<|end|>\n<|user|>\nfirst question<|end|>\n<|assistant|>\nan answer<|end|>\n"
            "<|user|>\nIs this clause void?<|end|>\n<|assistant|>\n",
    "llama2": f"<s>[INST] <<SYS>>\n{SMOL_SYSTEM}\n<</SYS>>\n\nfirst question [/INST] an answer </s><s>[INST] "
              "Is this clause void? [/INST]",
}


@pytest.mark.parametrize("name", CHAT_FORMATS)
def test_a_chat_formatted_completions_prompt_is_read_as_its_conversation(name):
    """lm-eval-harness and others apply the chat template themselves and send the result to /v1/completions:
    the router reads the conversation under the chat policy, not the template's system line and role tags."""
    text = CHAT_FORMATS[name]
    assert completion_routing_text(text, RouterConfig(path="r")) == "Is this clause void?"
    assert completion_routing_text([text, "x"], RouterConfig(path="r")) == "Is this clause void?"
    # under the system-prompt policy, the template's own default system line is not read (the chat endpoint never
    # sees it: vLLM adds it after routing); a system prompt of the client's is
    k2 = RouterConfig(path="r", policy="system_and_last_k", last_k=2)
    assert prompt_routing_text(text, k2) == "first question\nIs this clause void?"
    own = text.replace(SMOL_SYSTEM, "You review contracts.")
    assert prompt_routing_text(own, k2) == "You review contracts.\nfirst question\nIs this clause void?"


def test_a_prompt_that_only_mentions_chat_markup_is_read_as_it_is():
    cfg = RouterConfig(path="r")
    for text in ["What does <|im_start|>user\nmean in ChatML?", "Explain the [INST] tag of Llama 2.",
                 "def f():\n    return '<start_of_turn>user\\n'", "plain text"]:
        assert prompt_routing_text(text, cfg) == text
    # an unfinished conversation (no end tags) still reads; one without a user turn reads its turns' text
    assert prompt_routing_text("<|im_start|>user\nWhat is 17 * 23?", cfg) == "What is 17 * 23?"
    assert prompt_routing_text(f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n", cfg) == SMOL_SYSTEM
