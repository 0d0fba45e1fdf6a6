"""Requests that make vLLM compute prompt logprobs go to the upstream alone.

vLLM with `--enable-lora` (0.32, the CPU build included) maps LoRA logits per sequence, not per prompt token, so
a request that asks for prompt logprobs (`prompt_logprobs`, or `echo` with `logprobs`/`top_logprobs`) crashes the
engine when it shares a batch with another request: every later request then fails until vLLM is restarted
(seen here with two such requests at once; vllm-project/vllm#17766, #16668). The gateway therefore gives such a
request the upstream to itself: it waits until the requests in flight have finished, and requests arriving
meanwhile wait behind it (so a steady stream of ordinary requests cannot starve it).

A shared/exclusive gate rather than aiorwlock's RWLock: a streamed response is finished (and its hold released)
in the task that streams the body, not in the one that acquired it, and aiorwlock ties a hold to its task.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

Release = Callable[[], Awaitable[None]]


def computes_prompt_logprobs(body: dict) -> bool:
    """Whether vLLM computes logprobs of the prompt for this chat or completions request body."""
    if body.get("prompt_logprobs") is not None:
        return True
    if body.get("echo"):  # vLLM: echo turns logprobs (completions) / top_logprobs (chat) into prompt logprobs
        return body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None
    return False


class UpstreamGate:
    """Any number of shared holders, or one exclusive holder; a waiting exclusive request goes before new shared ones."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self.shared = 0  # requests in flight
        self.exclusive = False  # a prompt-logprobs request in flight
        self.exclusive_waiting = 0

    async def enter(self, exclusive: bool, timeout: float) -> Release:
        """Wait (at most `timeout` seconds, else asyncio.TimeoutError) for a hold; returns its release, which is
        safe to call more than once."""
        await asyncio.wait_for(self._acquire(exclusive), timeout)
        released = False

        async def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            async with self._cond:
                if exclusive:
                    self.exclusive = False
                else:
                    self.shared -= 1
                self._cond.notify_all()

        return release

    async def _acquire(self, exclusive: bool) -> None:
        async with self._cond:
            if not exclusive:
                await self._cond.wait_for(lambda: not self.exclusive and not self.exclusive_waiting)
                self.shared += 1
                return
            self.exclusive_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self.exclusive and self.shared == 0)
                self.exclusive = True
            finally:
                self.exclusive_waiting -= 1
                self._cond.notify_all()  # a request that gave up waiting no longer holds back shared ones
