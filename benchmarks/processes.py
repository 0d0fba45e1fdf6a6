"""Processes the benchmarks start and stop: gateways, upstreams, by PID and process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def spawn(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                            env={**os.environ, **(env or {})})


def stop_process(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def gateway_config(base_cfg: Path, upstream: str, port: int, out: Path) -> Path:
    doc = yaml.safe_load(base_cfg.read_text())
    root = base_cfg.resolve().parent
    for a in doc.get("adapters", []):
        a["path"] = str((root / a["path"]).resolve())
    for key in ("path", "train_data"):
        if doc["router"].get(key):
            doc["router"][key] = str((root / doc["router"][key]).resolve())
    doc.pop("adapter_root", None)
    doc["gateway"] = {**doc.get("gateway", {}), "port": port}
    doc["vllm"] = {**doc.get("vllm", {}), "url": upstream}
    out.write_text(yaml.safe_dump(doc))
    return out


