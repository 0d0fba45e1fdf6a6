"""Fault drills against a running gateway and the real vLLM behind it. Each drill returns
{"name", "passed", "detail"}; none of them can hang (every wait is bounded).

The vLLM drills kill the upstream for real (SIGKILL to its process group) and start it again on the same
port, so they need the `VllmServer` object that owns it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

LONG = {"model": "auto", "stream": True, "max_tokens": 1500, "ignore_eos": True, "temperature": 1.0,
        "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]}


def _result(name: str, passed: bool, detail: str) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail}


def vllm_running(vllm_url: str) -> float:
    text = httpx.get(f"{vllm_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:num_requests_running"))


def killed_mid_stream(gw: str, vllm) -> dict:
    """SIGKILL vLLM while it streams: the client's stream must end with an error event and [DONE], promptly."""
    t0 = time.monotonic()
    try:
        with httpx.stream("POST", f"{gw}/v1/chat/completions", json=LONG, timeout=60) as r:
            it = r.iter_text()
            first = next(it)
            os.killpg(vllm.proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            rest = "".join(it)
    except httpx.HTTPError as exc:
        return _result("upstream killed mid-stream", False, f"client saw {type(exc).__name__} instead of an error event")
    text = first + rest
    ended = time.monotonic() - killed
    ok = '"code": "upstream_stream_error"' in text and text.rstrip().endswith("data: [DONE]") and ended < 30
    vllm.proc.wait(30)
    vllm.proc = None
    return _result("upstream killed mid-stream", ok, f"stream ended {ended:.1f} s after the kill "
                   f"({time.monotonic() - t0:.1f} s total) with {'an error event + [DONE]' if ok else repr(text[-200:])}")


def upstream_down(gw: str) -> dict:
    r = httpx.post(f"{gw}/v1/chat/completions", timeout=60, json={
        "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]})
    ready = httpx.get(f"{gw}/ready", timeout=30)
    ok = (r.status_code == 503 and r.headers.get("retry-after") and r.json()["error"]["code"] == "upstream_unavailable"
          and ready.status_code == 503)
    return _result("upstream down: 503 + Retry-After, /ready false", ok,
                   f"chat {r.status_code} retry-after={r.headers.get('retry-after')}, /ready {ready.status_code}")


def recovers(gw: str, vllm) -> dict:
    """Start vLLM again on the same port; the gateway must notice by itself (no restart, no admin call)."""
    t0 = time.monotonic()
    vllm.start(timeout=600, log=lambda m: None)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and httpx.get(f"{gw}/ready", timeout=30).status_code != 200:
        time.sleep(0.5)
    r = httpx.post(f"{gw}/v1/chat/completions", timeout=120, json={
        "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "Is a verbal agreement binding?"}]})
    return _result("recovers when vLLM returns", r.status_code == 200,
                   f"answer {r.status_code} {time.monotonic() - t0:.0f} s after restarting vLLM")


class SilentServer:
    """A real TCP server that accepts connections and never answers: the slowest possible upstream."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self):
        self._stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


def slow_upstream_timeout(gw_silent: str, first_token: float) -> dict:
    t = time.monotonic()
    r = httpx.post(f"{gw_silent}/v1/chat/completions", timeout=60, json={
        "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]})
    took = time.monotonic() - t
    ok = r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout" and took < first_token + 10
    return _result("slow upstream: first-token timeout fires", ok, f"{r.status_code} after {took:.1f} s (timeout {first_token:g} s)")


def adapter_unloaded(gw: str, vllm_url: str, name: str, path: str) -> dict:
    assert httpx.post(f"{vllm_url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60).status_code == 200
    try:
        r = httpx.post(f"{gw}/v1/chat/completions", timeout=120, headers={"x-forgetless-route": name}, json={
            "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "Is a verbal agreement binding?"}]})
        ok = r.status_code == 200 and r.headers.get("x-forgetless-fallback") and r.json()["model"] != name
        return _result("adapter unloaded at runtime: base answers, fallback header", ok,
                       f"{r.status_code} model={r.json().get('model')} fallback={r.headers.get('x-forgetless-fallback')}")
    finally:
        httpx.post(f"{vllm_url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=60)


def corrupt_reload(gw: str, admin_key: str, router_dir: Path, work: Path) -> dict:
    bad = work / "corrupt-router"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(router_dir, bad)
    (bad / "router.json").write_text("{ not json")
    r = httpx.post(f"{gw}/admin/reload", json={"path": str(bad)}, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    after = httpx.post(f"{gw}/v1/chat/completions", timeout=120, json={
        "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "Is a verbal agreement binding?"}]})
    ok = r.status_code == 400 and r.json()["error"]["code"] == "router_invalid" and after.status_code == 200 \
        and after.headers.get("x-forgetless-route")
    return _result("corrupted router on /admin/reload: refused, old router serves", ok,
                   f"reload {r.status_code}, then chat {after.status_code} route={after.headers.get('x-forgetless-route')}")


def disconnect_cancels(gw: str, vllm_url: str) -> dict:
    with httpx.stream("POST", f"{gw}/v1/chat/completions", json=LONG, timeout=120) as r:
        chunks = r.iter_raw()  # kept: a discarded iterator closes the response, a disconnect before the check
        first = next(chunks)
        deadline = time.monotonic() + 20  # vLLM's gauge is refreshed by its stats loop, not per request
        while (running := vllm_running(vllm_url)) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        if running < 1:
            return _result("client disconnect cancels the vLLM request", False,
                           f"vLLM never reported the request running (HTTP {r.status_code}, first bytes {first[:120]!r})")
    deadline = time.monotonic() + 20
    while vllm_running(vllm_url) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    left = vllm_running(vllm_url)
    return _result("client disconnect cancels the vLLM request", running >= 1 and left == 0,
                   f"running while streaming {running:g}, {left:g} after disconnect")


def slow_body(gw_host: str, gw_port: int, body_timeout: float) -> dict:
    with socket.create_connection((gw_host, gw_port), timeout=body_timeout + 15) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"model\"")
        t = time.monotonic()
        head = s.recv(1000)
    took = time.monotonic() - t
    return _result("never-finished request body: 408", head.startswith(b"HTTP/1.1 408"), f"{head[:12]!r} after {took:.1f} s")


def oversized_body(gw: str, limit: int) -> dict:
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * (limit + 10)}]})
    r = httpx.post(f"{gw}/v1/chat/completions", content=body, headers={"content-type": "application/json"}, timeout=60)
    return _result("body over the limit: 413", r.status_code == 413 and r.json()["error"]["code"] == "request_too_large",
                   f"{r.status_code} for {len(body)} bytes (limit {limit})")


def auth_required(gw: str, admin_key: str) -> dict:
    replies = {
        "admin without key": httpx.post(f"{gw}/admin/reload", timeout=30),
        "admin with wrong key": httpx.post(f"{gw}/admin/reload", headers={"Authorization": "Bearer nope"}, timeout=30),
    }
    codes = {k: r.status_code for k, r in replies.items()}
    leaked = any(admin_key in r.text for r in replies.values())
    return _result("admin endpoints need the admin key (401)", set(codes.values()) == {401} and not leaked,
                   ", ".join(f"{k}: {v}" for k, v in codes.items()))
