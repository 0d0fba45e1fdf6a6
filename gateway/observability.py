"""Prometheus metrics per route and JSON logs without prompt or completion text (unless enabled)."""

from __future__ import annotations

import atexit
import collections
import json
import logging
import sys
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

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
        r.register(_DroppedLogLines())


class _DroppedLogLines(Collector):
    """The process's log lines dropped because the log reader fell behind (logging is per process, metrics per app)."""

    def collect(self):
        yield CounterMetricFamily("forgetless_log_lines_dropped",
                                  "Log lines dropped because the log's reader fell behind (the writer's queue was full)",
                                  value=_writer.dropped if _writer else 0)


class JsonFormatter(logging.Formatter):
    FIELDS = ("request_id", "method", "path", "status", "route", "model", "fallback", "confidence", "router_ms",
              "upstream_ms", "total_ms", "stream", "prompt", "completion", "error", "lag_ms", "dropped")

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)), "level": record.levelname.lower(),
               "msg": record.getMessage()}
        if record.name != "forgetless.gateway":
            doc["logger"] = record.name  # uvicorn's
        for f in self.FIELDS:
            if hasattr(record, f):
                doc[f] = getattr(record, f)
        if record.exc_info:  # uvicorn's "Exception in ASGI application": the whole traceback, still on one line
            tb = self.formatException(record.exc_info)
            doc["exc"], doc["traceback"] = tb.splitlines()[-1], tb
        return json.dumps(doc, ensure_ascii=False)


class BackgroundWriter(logging.Handler):
    """Writes log lines from a thread of its own, so the event loop never blocks on a log pipe whose reader has
    stalled. A record is queued (a deque append; no thread is woken per line, which cost 15 % of requests/s with the
    standard library's QueueListener) and the thread formats and writes whatever has queued every `interval`
    seconds, in one write. When `max_lines` are waiting, further records are dropped and counted; the first write
    after that starts with a warning line saying how many."""

    def __init__(self, stream, max_lines: int, interval: float = 0.05):
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.stream, self.max_lines, self.interval = stream, max_lines, interval
        self.records: collections.deque[logging.LogRecord] = collections.deque()
        self.dropped = self._reported = 0
        self._wake, self._writing = threading.Event(), False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:  # under the handler's lock (Handler.handle)
        if len(self.records) >= self.max_lines:
            self.dropped += 1
        else:
            self.records.append(record)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._writing = True
            try:
                self._write()
            finally:
                self._writing = False

    def _write(self) -> None:
        lines, reported = [], self._reported
        if (dropped := self.dropped) > reported:
            gap = logging.LogRecord("forgetless.gateway", logging.WARNING, __file__, 0, "log lines dropped: the log's "
                                    "reader fell behind and the gateway's log queue was full", None, None)
            gap.dropped, self._reported = dropped - reported, dropped
            lines.append(self.format(gap))
        announced = len(lines)
        while self.records:
            record = self.records.popleft()
            try:
                lines.append(self.format(record))
            except Exception:  # a record that cannot be formatted costs its own line only
                self.handleError(record)
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # the reader has gone (a closed pipe): these lines are lost, and counted
                with self.lock:
                    self.dropped += len(lines) - announced
                self._reported = reported  # the gap was not announced either

    def flush(self, timeout: float = 2.0) -> None:
        """Write what is queued now; give up waiting after `timeout` if the log's reader has stalled."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while (self.records or self._writing or self._wake.is_set()) and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        # logging.config.dictConfig closes every handler it finds, and a logger that holds this one may go on using
        # it: so closing writes what is queued and the thread stays
        self.flush()
        super().close()


_writer: BackgroundWriter | None = None


def setup_logging(level: str = "INFO", stream=None, queue_lines: int = 10_000) -> logging.Logger:
    """JSON lines on `stream` (stderr), written by a thread of their own: the gateway's, and uvicorn's warnings and
    errors (invalid HTTP, an exception in the app), which would otherwise be plain text written on the event loop.
    The first call sets the process up; later calls (more apps in one process) only set the level."""
    global _writer
    logger = logging.getLogger("forgetless.gateway")
    if _writer is None:
        _writer = BackgroundWriter(stream or sys.stderr, queue_lines)
        atexit.register(_writer.flush)  # at exit, before logging.shutdown
        for name in ("forgetless.gateway", "uvicorn"):  # uvicorn.error and uvicorn.access pass their records up
            logging.getLogger(name).addHandler(_writer)
            logging.getLogger(name).propagate = False
    logger.setLevel(level)
    return logger
