"""Prometheus metrics per route and JSON logs without prompt or completion text (unless enabled)."""

from __future__ import annotations

import json
import logging
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Histogram

_MS_BUCKETS = (0.5, 1, 2, 3, 5, 10, 20, 50, 100, 250, 500, 1000)
_S_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class Metrics:
    """One registry per app, so several gateways (tests, benchmarks) can live in one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("forgetless_requests_total", "Requests by route, model and status", ["endpoint", "route", "model", "status"], registry=r)
        self.errors = Counter("forgetless_errors_total", "Error responses by route and kind", ["route", "kind"], registry=r)
        self.fallbacks = Counter("forgetless_fallbacks_total", "Requests sent to the base model as a fallback", ["route", "reason"], registry=r)
        self.decisions = Counter("forgetless_router_decisions_total",
                                 "Route decisions by where they came from: the decision cache (a text seen before) or the encoder",
                                 ["source"], registry=r)
        # bound once (both series show from the start, at 0): the request path only increments
        self.decided_from_cache, self.decided_by_encoder = (self.decisions.labels(s) for s in ("cache", "encoder"))
        self.router_ms = Histogram("forgetless_router_latency_ms", "Router decision time (ms)", buckets=_MS_BUCKETS, registry=r)
        self.upstream_s = Histogram("forgetless_upstream_latency_seconds", "Upstream response time", ["route"], buckets=_S_BUCKETS, registry=r)
        self.ttft_s = Histogram("forgetless_time_to_first_token_seconds", "Time to first streamed chunk", ["route"], buckets=_S_BUCKETS, registry=r)
        self.tokens = Counter("forgetless_tokens_total", "Tokens reported by the upstream", ["route", "kind"], registry=r)
        self.exclusive = Counter("forgetless_exclusive_requests_total",
                                 "Requests sent to the upstream alone (they compute prompt logprobs)", registry=r)
        self.loop_lag_s = Histogram("forgetless_event_loop_lag_seconds",
                                    "How late the gateway's event loop ran a 0.25 s timer (CPU starvation, blocking calls)",
                                    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10), registry=r)


class JsonFormatter(logging.Formatter):
    FIELDS = ("request_id", "method", "path", "status", "route", "model", "fallback", "confidence", "router_ms",
              "upstream_ms", "total_ms", "stream", "prompt", "completion", "error", "lag_ms")

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)), "level": record.levelname.lower(),
               "msg": record.getMessage()}
        for f in self.FIELDS:
            if hasattr(record, f):
                doc[f] = getattr(record, f)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str = "INFO", stream=None) -> logging.Logger:
    logger = logging.getLogger("forgetless.gateway")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        h = logging.StreamHandler(stream or sys.stderr)
        h.setFormatter(JsonFormatter())
        logger.addHandler(h)
    logger.setLevel(level)
    logger.propagate = False
    return logger
