"""What a running gateway knows: config, router (hot-swappable), routing table, upstream client, metrics."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from classifier.routers.embedding import EmbeddingRouter
from gateway.config import AdapterConfig, RoutesConfig, Secrets
from gateway.observability import Metrics
from gateway.routing_table import RoutingTable
from gateway.upstream_gate import UpstreamGate


@dataclass
class Target:
    """Where one request goes and why."""

    model: str  # upstream model name: the base's or an adapter's
    route: str | None = None  # router route, when the router decided
    confidence: float | None = None
    router_ms: float | None = None
    fallback: str | None = None  # why the base answers instead: "low-confidence", "route-unavailable", "upstream-error"
    forced: bool = False
    exact: bool = False  # this model or an error, never the base instead (a candidate under audit)


class GatewayState:
    def __init__(self, cfg: RoutesConfig, secrets: Secrets, router: EmbeddingRouter | None):
        self.cfg, self.secrets, self.router = cfg, secrets, router
        self.metrics = Metrics()
        self.adapters: dict[str, AdapterConfig] = {a.name: a for a in cfg.adapters}
        self.table = RoutingTable.load(cfg.router.table)
        self.table.check_models(set(self.known_models()), cfg.router.table)
        if stale := self.table.stale_for(self.router_fp):
            logging.getLogger("forgetless.gateway").warning(stale)
        self.client: httpx.AsyncClient | None = None
        self.reload_lock = asyncio.Lock()
        self.gate = UpstreamGate()  # prompt-logprobs requests go to vLLM alone (gateway/upstream_gate.py)
        # two threads decide routes: a text alone gets both cores, two at once one core each (the ONNX encoder's
        # solo session); more would contend (measured: 430 decisions/s from one thread, 170/s from four)
        self.router_pool = ThreadPoolExecutor(2, thread_name_prefix="router")
        # adapters under audit (`forgetless audit --candidate ... --gateway URL`): loaded in vLLM by the audit,
        # answered here only when named with the admin key, never routed to; the audit's scoring comes through the
        # gateway so that its prompt-logprobs requests are sent to vLLM alone
        self.candidates: set[str] = set()

    async def decide(self, router: EmbeddingRouter, text: str):
        if (hit := router.cached(text)) is not None:  # a repeated text is answered here, without a thread hand-off
            self.metrics.decided_from_cache.inc()
            return hit
        # counted as encoded even if the same text's decision lands in the cache in the microseconds before this
        # thread looks (two copies of one text at once): the counter says what the gateway asked for
        self.metrics.decided_by_encoder.inc()
        return await asyncio.get_running_loop().run_in_executor(self.router_pool, router.decide, text)

    @property
    def router_fp(self) -> str | None:
        """The loaded router's fingerprint: the audit's per-route sure thresholds hold only for the router they were
        fitted on (another gets the table's default threshold)."""
        return self.router.fingerprint() if self.router is not None else None

    @property
    def base(self) -> str:
        return self.cfg.base.name

    def known_models(self) -> list[str]:
        return [self.base, *self.adapters]

    def route_model(self, route: str, probability: float | None = None) -> str:
        """The model that serves a route: the audit table's choice (given how sure the router is), else the adapter
        of that name, else the base."""
        model = self.table.model_for(route, probability, self.router_fp)
        if model in self.adapters or model == self.base:
            return model
        return route if route in self.adapters else self.base

    def routing_table(self) -> dict[str, str]:
        routes = self.router.labels if self.router else list(self.adapters)
        return {r: self.route_model(r) for r in routes}

    def upstream_headers(self) -> dict[str, str]:
        key = self.secrets.upstream_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

