"""Completions prompts written in a chat format, read back as the conversation they hold.

Evaluation harnesses (lm-eval-harness with `--apply_chat_template`) and some clients apply the model's chat
template themselves and send the result to /v1/completions, as text or as token ids. The router should then read
the conversation the way /v1/chat/completions reads it (the routing policy: the last user turn, or the system
prompt and the last k user turns), not the markup: the template's default system line ("You are a helpful AI
assistant named SmolLM, ...") and the role tags pull every such prompt towards the fallback.

A prompt counts as chat-formatted only when it starts with a known template's opening (after the tokenizer's
begin-of-text token), so a prompt that merely mentions `<|im_start|>` is read as it is. Known templates: ChatML
(SmolLM2, Qwen, Hermes), Llama 3, Gemma, Phi-3 and Mistral / Llama 2 (`[INST] ... [/INST]`).
"""

from __future__ import annotations

import re

_BOS = r"\A\s*(?:<\|begin_of_text\|>|<bos>|<s>|<\|endoftext\|>)?\s*"

# (opening the prompt must start with, one turn: role and content up to the turn's end or the next turn)
_TURNS = [
    (re.compile(_BOS + r"<\|im_start\|>"),
     re.compile(r"<\|im_start\|>([A-Za-z_]+)\n(.*?)(?=<\|im_end\|>|<\|im_start\|>|\Z)", re.S)),
    (re.compile(_BOS + r"<\|start_header_id\|>"),
     re.compile(r"<\|start_header_id\|>([A-Za-z_]+)<\|end_header_id\|>(.*?)(?=<\|eot_id\|>|<\|start_header_id\|>|\Z)", re.S)),
    (re.compile(_BOS + r"<start_of_turn>"),
     re.compile(r"<start_of_turn>([A-Za-z_]+)\n(.*?)(?=<end_of_turn>|<start_of_turn>|\Z)", re.S)),
    (re.compile(_BOS + r"<\|(?:system|user)\|>"),
     re.compile(r"<\|(system|user|assistant)\|>(.*?)(?=<\|end\|>|<\|(?:system|user|assistant)\|>|\Z)", re.S)),
]
_INST_START = re.compile(_BOS + r"\[INST\]")
_INST = re.compile(r"\[INST\](.*?)(?:\[/INST\]|\Z)", re.S)
_SYS = re.compile(r"<<SYS>>(.*?)<</SYS>>", re.S)
_ROLES = {"model": "assistant"}  # Gemma's name for the assistant

#: system lines that chat templates write on their own when a conversation has none (SmolLM2; Qwen2.5; Qwen2). In a
#: prompt rendered by the client they are the template's, not the user's: /v1/chat/completions never sees them (vLLM
#: renders the template after routing), so the router does not read them here either
TEMPLATE_DEFAULT_SYSTEM = frozenset({
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "You are a helpful assistant.",
})


def written_by_template(message: dict) -> bool:
    """Whether `message` is a template's own default system line."""
    return message["role"] == "system" and message["content"] in TEMPLATE_DEFAULT_SYSTEM


def conversation(text: str) -> list[dict] | None:
    """The turns of a chat-formatted prompt as chat messages (`role`, `content`); None when it is not one."""
    for opening, turn in _TURNS:
        if opening.match(text):
            return [{"role": _ROLES.get(role, role), "content": content.strip()} for role, content in turn.findall(text)]
    if _INST_START.match(text):
        messages = []
        for content in _INST.findall(text):
            if system := _SYS.search(content):
                messages.append({"role": "system", "content": system.group(1).strip()})
                content = _SYS.sub("", content)
            messages.append({"role": "user", "content": content.strip()})
        return messages
    return None
