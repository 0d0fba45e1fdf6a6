"""A background response (`background: true`) keeps running in vLLM after the gateway has answered with its id.

A request that makes vLLM compute prompt logprobs must have vLLM to itself (gateway/upstream_gate.py): vLLM 0.32
with LoRA crashes its engine when such a request shares a batch. So the background request's shared hold on the
upstream gate is not released with the gateway's answer (for a background stream: when the relay ends, as the
client may stop reading while the response runs on) but handed to a watcher, which asks vLLM for the
response's status every `POLL_S` seconds and releases the hold once it has finished (or is gone, or vLLM is
unreachable, or the total timeout has passed).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from urllib.parse import quote

import httpx

from gateway.state import GatewayState
from gateway.upstream_gate import Release

#: statuses after which a response no longer runs in vLLM
FINISHED = frozenset({"completed", "failed", "cancelled", "incomplete"})
POLL_S = 0.25
#: watchers still running (a task nothing refers to may be collected)
WATCHERS: set[asyncio.Task] = set()
#: a Responses stream's response id, in its first event (response.created)
RESPONSE_ID = re.compile(rb'"id":\s*"(resp_[^"]+)"')


def hold_while_running(state: GatewayState, answer: bytes, release: Release) -> bool:
    """Hand `release` to a watcher when `answer` (vLLM's JSON for a background request) is a response still
    queued or in progress; False (the caller releases) otherwise."""
    try:
        doc = json.loads(answer)
    except ValueError:
        return False
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or doc.get("status") in FINISHED:
        return False
    watch_response(state, doc["id"], release)
    return True


def watch_response(state: GatewayState, response_id: str, release: Release) -> None:
    """Keep the hold until vLLM says `response_id` has finished (also for a background stream the client may have
    left before its end); the watcher releases it."""
    task = asyncio.create_task(_watch(state, response_id, release))
    WATCHERS.add(task)
    task.add_done_callback(WATCHERS.discard)


async def _watch(state: GatewayState, response_id: str, release: Release) -> None:
    url = f"{state.cfg.upstream_url}/v1/responses/{quote(response_id, safe='')}"
    deadline = time.monotonic() + state.cfg.gateway.timeouts.total
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            try:
                resp = await state.client.get(url, headers=state.upstream_headers(), timeout=10)
                doc = resp.json() if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return  # vLLM unreachable or answering nonsense: nothing of ours can be running there
            status = doc.get("status") if isinstance(doc, dict) else None
            if status is None or status in FINISHED:
                return
    finally:
        await release()
