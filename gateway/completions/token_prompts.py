"""Completions prompts given as token ids, read as text for the router.

The router reads text. A prompt of token ids (`[1, 2, 3]`, or a list of such lists) is turned back into text by
the upstream's own tokenizer: vLLM's `POST /detokenize` with the base model's name (adapters share its
tokenizer), one call per prompt, a few at a time. Only the routing uses that text; the request still carries the
token ids, unchanged. A prompt the upstream cannot read (an id outside the vocabulary reads as nothing; vLLM
unreachable or refusing) has no text and goes to the base model (fallback "no-text"), whose own answer then says
what is wrong with it.
"""

from __future__ import annotations

import asyncio

import httpx

from gateway.state import GatewayState


def _is_ids(value) -> bool:
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))


def token_prompts(prompt) -> list[list[int]] | None:
    """The prompts of a token-id `prompt`, one list of ids each; None for text or anything else."""
    if _is_ids(prompt):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(_is_ids(p) for p in prompt):
        return prompt
    return None


async def _detokenize_one(state: GatewayState, ids: list[int]) -> str:
    timeouts = state.cfg.gateway.timeouts
    try:
        r = await asyncio.wait_for(
            state.client.post(f"{state.cfg.upstream_url}/detokenize", json={"model": state.base, "tokens": ids},
                              headers=state.upstream_headers()),
            timeouts.first_token)
    except (httpx.HTTPError, asyncio.TimeoutError):
        return ""
    if r.status_code != 200:
        return ""
    try:
        doc = r.json()
    except ValueError:
        return ""
    text = doc.get("prompt") if isinstance(doc, dict) else None
    return text if isinstance(text, str) else ""


#: calls at once for one request: a long list of prompts must not take the pooled upstream connections (256 by
#: default, waited for at most the connect timeout) from every other request
AT_ONCE = 4


async def detokenize(state: GatewayState, prompts: list[list[int]]) -> list[str]:
    """Each prompt's text as the upstream reads it ("" where it cannot)."""
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(ids: list[int]) -> str:
        async with gate:
            return await _detokenize_one(state, ids)

    return list(await asyncio.gather(*(one(ids) for ids in prompts)))
