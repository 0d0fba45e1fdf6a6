"""The gate that sends prompt-logprobs requests to vLLM alone (gateway/upstream_gate.py), without a server."""

from __future__ import annotations

import asyncio

import pytest

from gateway.upstream_gate import UpstreamGate, computes_prompt_logprobs


@pytest.mark.parametrize("body, expected", [
    ({"prompt_logprobs": 1}, True),
    ({"prompt_logprobs": 0}, True),
    ({"echo": True, "logprobs": 1}, True),  # completions: vLLM turns echo + logprobs into prompt logprobs
    ({"echo": True, "top_logprobs": 2}, True),  # chat
    ({"echo": True}, False),
    ({"logprobs": 5}, False),
    ({"logprobs": True, "top_logprobs": 3}, False),
    ({"prompt_logprobs": None, "echo": False, "logprobs": 1}, False),
])
def test_which_requests_compute_prompt_logprobs(body, expected):
    assert computes_prompt_logprobs(body) is expected


def test_exclusive_waits_for_shared_and_goes_before_newer_shared():
    async def scenario():
        gate, order = UpstreamGate(), []
        first = await gate.enter(False, 1)

        async def exclusive():
            release = await gate.enter(True, 5)
            order.append("exclusive")
            await asyncio.sleep(0.05)
            order.append("exclusive done")
            await release()

        async def later_shared():
            release = await gate.enter(False, 5)
            order.append("later shared")
            await release()

        ex = asyncio.create_task(exclusive())
        await asyncio.sleep(0.02)
        late = asyncio.create_task(later_shared())
        await asyncio.sleep(0.02)
        assert order == [] and gate.exclusive_waiting == 1  # the exclusive one waits for the request in flight
        await first()
        await first()  # releasing twice is harmless
        await asyncio.gather(ex, late)
        assert order == ["exclusive", "exclusive done", "later shared"]
        assert (gate.shared, gate.exclusive, gate.exclusive_waiting) == (0, False, 0)

    asyncio.run(scenario())


def test_a_timed_out_wait_holds_nothing():
    async def scenario():
        gate = UpstreamGate()
        held = await gate.enter(False, 1)
        with pytest.raises(asyncio.TimeoutError):
            await gate.enter(True, 0.05)
        assert gate.exclusive_waiting == 0 and not gate.exclusive
        again = await gate.enter(False, 0.05)  # the exclusive request that gave up no longer holds others back
        await held()
        await again()
        await (await gate.enter(True, 0.05))()
        assert (gate.shared, gate.exclusive) == (0, False)

    asyncio.run(scenario())
