"""Watches the gateway's event loop: how late it runs a timer is how long every connection waited.

A gateway starved of CPU (vLLM computing on the same cores) or blocked by a slow call stops reading requests,
relaying chunks and answering health checks all at once; nothing in the per-request metrics shows it. This
ticks every `interval` seconds, records how late each tick came in the `forgetless_event_loop_lag_seconds`
histogram, and logs one line for a stall of `warn_after` seconds or more.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Histogram

log = logging.getLogger("forgetless.gateway")


async def watch_loop_lag(hist: Histogram, interval: float = 0.25, warn_after: float = 1.0) -> None:
    """Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - due)
        hist.observe(lag)
        if lag >= warn_after:
            log.warning("event loop stalled for %.2f s (CPU starvation or a blocking call): every connection "
                        "waited", lag, extra={"lag_ms": round(lag * 1000, 1)})
