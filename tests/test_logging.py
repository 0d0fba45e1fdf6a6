"""The gateway's log writer (gateway/observability.py) on real pipes: lines whole and in order, and a reader that
has gone costs the lines, counted, never an exception in the code that logs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time

from gateway.observability import BackgroundWriter, JsonFormatter


def _record(i: int) -> logging.LogRecord:
    r = logging.LogRecord("forgetless.gateway", logging.INFO, __file__, 0, "request", None, None)
    r.request_id, r.status = f"req-{i}", 200
    return r


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_lines_arrive_whole_and_in_order():
    rd, wr = os.pipe()
    with os.fdopen(rd, "rb") as reader, os.fdopen(wr, "w") as stream:
        w = BackgroundWriter(stream, max_lines=1000, interval=0.01)
        for i in range(200):
            w.handle(_record(i))
        _wait(lambda: not w.records)
        w.close()
        stream.close()
        docs = [json.loads(ln) for ln in reader.read().splitlines()]
    assert [d["request_id"] for d in docs] == [f"req-{i}" for i in range(200)]
    assert w.dropped == 0 and all(d["level"] == "info" and d["status"] == 200 for d in docs)


def test_a_closed_pipe_loses_lines_counted_without_raising():
    rd, wr = os.pipe()
    os.close(rd)  # the reader has gone: every write fails with EPIPE (Python ignores SIGPIPE)
    stream = os.fdopen(wr, "w")
    w = BackgroundWriter(stream, max_lines=1000, interval=0.01)
    for i in range(50):
        w.handle(_record(i))  # the logging call itself never sees the failure
    _wait(lambda: w.dropped == 50)
    w.close()
    with contextlib.suppress(BrokenPipeError):  # what the failed writes left in the stream's buffer
        stream.close()
    assert w.dropped == 50 and not w.records


def test_a_full_queue_drops_and_the_next_write_announces_the_gap():
    rd, wr = os.pipe()
    with os.fdopen(rd, "rb") as reader, os.fdopen(wr, "w") as stream:
        w = BackgroundWriter(stream, max_lines=5, interval=3600)  # the thread does not write until closed
        for i in range(8):
            w.handle(_record(i))
        assert w.dropped == 3 and len(w.records) == 5
        w.close()
        stream.close()
        docs = [json.loads(ln) for ln in reader.read().splitlines()]
    assert docs[0]["level"] == "warning" and docs[0]["dropped"] == 3 and "log lines dropped" in docs[0]["msg"]
    assert [d["request_id"] for d in docs[1:]] == [f"req-{i}" for i in range(5)]


def test_an_exception_is_one_json_line_with_its_traceback():
    try:
        {}["missing"]
    except KeyError:
        r = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 0, "Exception in ASGI application", None, sys.exc_info())
    line = JsonFormatter().format(r)
    doc = json.loads(line)
    assert "\n" not in line and doc["logger"] == "uvicorn.error" and doc["level"] == "error"
    assert doc["exc"] == "KeyError: 'missing'" and doc["traceback"].startswith("Traceback") and "test_logging.py" in doc["traceback"]
