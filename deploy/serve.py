"""`forgetless serve`: vLLM (base + adapters) and the gateway in front of it, stopped together on SIGINT/SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from classifier.errors import InputError
from deploy.base_model import DEFAULT_BASE_DIR, build_base
from deploy.vllm_server import VllmServer, port_free
from gateway.config import RoutesConfig, Secrets

HOME = Path(os.environ.get("FORGETLESS_HOME", Path.home() / ".cache" / "forgetless"))


def resolve_base(cfg: RoutesConfig, log=print) -> Path:
    if cfg.base.path.startswith("builtin:"):
        if cfg.base.path != "builtin:smollm2":
            raise InputError(f"{cfg.source}: base.path: unknown builtin '{cfg.base.path}' (only builtin:smollm2)")
        return build_base(DEFAULT_BASE_DIR, log=log)
    return Path(cfg.base.path)


def ready_banner(cfg: RoutesConfig) -> str:
    url = f"http://{cfg.gateway.host}:{cfg.gateway.port}/v1"
    return (
        f"forgetless ready: gateway {url} (virtual model '{cfg.router.virtual_model}'), vLLM {cfg.upstream_url}\n"
        f"  try: curl -s {url}/chat/completions -H 'Content-Type: application/json' -D - \\\n"
        f"         -d '{{\"model\": \"{cfg.router.virtual_model}\", \"messages\": [{{\"role\": \"user\", "
        f"\"content\": \"Is a verbal agreement legally binding?\"}}], \"max_tokens\": 60}}'\n"
        f"  Ctrl-C stops the gateway and vLLM."
    )


def server_config(app, cfg: RoutesConfig, **where):
    """The gateway's uvicorn settings (`where`: host/port overrides), shared by `serve` and in-process test gateways."""
    import uvicorn

    # uvloop and httptools named, not left to uvicorn's "auto": without them (a gateway image without vLLM, whose
    # dependencies had brought them in) uvicorn falls back to asyncio's loop and the pure-Python h11 parser, and the
    # gateway answered 23 % fewer requests a second (benchmarks/FINDINGS.md, "Gateway overhead")
    # log_config None: uvicorn's warnings and errors go through the gateway's JSON log writer (setup_logging)
    return uvicorn.Config(app, **{"host": cfg.gateway.host, "port": cfg.gateway.port, **where}, log_level="warning",
                          log_config=None, loop="uvloop", http="httptools",
                          timeout_keep_alive=cfg.gateway.keep_alive_timeout, timeout_graceful_shutdown=10)


def keep_one_blas_thread() -> None:
    """From here on this process's BLAS uses one thread. The gateway does BLAS only in the router's head, whose
    products are small, and decides on worker threads: OpenBLAS ignores a limit set from a worker thread once the
    main thread has set one (seen with scipy-openblas: the head's per-call limit read 2 threads inside a router
    thread), so the limit is set here, on the main thread, for good."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def serve(cfg: RoutesConfig, start_vllm: bool = True, log=print) -> None:
    import uvicorn

    from gateway.app import create_app, load_or_train_router

    secrets = Secrets()
    base_dir = resolve_base(cfg, log)
    router = load_or_train_router(cfg, log)  # fail fast, before vLLM's 35 s start
    keep_one_blas_thread()
    if not port_free(cfg.gateway.host, cfg.gateway.port):
        raise InputError(f"gateway port {cfg.gateway.host}:{cfg.gateway.port} is already in use (set gateway.port or FORGETLESS_GATEWAY_PORT)")
    vllm = None
    if start_vllm and not cfg.vllm.url:
        upstream_key = secrets.upstream_key.get_secret_value() if secrets.upstream_key else None
        vllm = VllmServer(cfg, base_dir, HOME / "logs" / f"vllm-{cfg.vllm.port}.log", upstream_key)
        vllm.start(log=log)
    try:
        app = create_app(cfg, secrets, router)
        server = uvicorn.Server(server_config(app, cfg))

        def announce():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not server.should_exit:
                try:
                    if httpx.get(f"http://{cfg.gateway.host}:{cfg.gateway.port}/health", timeout=1).status_code == 200:
                        log(ready_banner(cfg))
                        return
                except httpx.HTTPError:
                    time.sleep(0.2)

        threading.Thread(target=announce, daemon=True).start()
        # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler that was
        # installed before it started; make that one a no-op so the `finally` below still stops vLLM.
        previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    finally:
        if vllm is not None:
            log("stopping vLLM")
            vllm.stop()
