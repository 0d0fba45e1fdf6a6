"""The gateway application: FastAPI app factory and its lifespan (pooled upstream client, router)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
from fastapi import FastAPI

from classifier.data import load_training_examples
from classifier.encoders import DEFAULT_BACKEND, build_encoder
from classifier.errors import InputError
from classifier.routers.embedding import RECIPE, EmbeddingRouter
from classifier.topics import resolve_topics
from gateway.admin.api_router import router as admin_router
from gateway.chat.api_router import router as chat_router
from gateway.completions.api_router import router as completions_router
from gateway.config import RoutesConfig, Secrets
from gateway.errors import install_error_handlers
from gateway.health.api_router import router as health_router
from gateway.limits import BodyLimit
from gateway.loop_lag import watch_loop_lag
from gateway.models.api_router import router as models_router
from gateway.observability import setup_logging
from gateway.proxy import Proxy
from gateway.responses.api_router import router as responses_router
from gateway.state import GatewayState
from gateway.upstream import upstream_client


def load_or_train_router(cfg: RoutesConfig, log=print) -> EmbeddingRouter:
    """Load the configured router; train it first from router.train_data if it does not exist yet, and say so
    (never retrain over it) when an existing one was trained on other data or an older recipe."""
    path = Path(cfg.router.path)
    ex = load_training_examples(cfg.router.train_data, cfg.router.fallback) if cfg.router.train_data else None
    if not (path / "router.json").is_file() and ex is not None:
        log(f"training router from {cfg.router.train_data} into {path}")
        given = {k: v for k, v in cfg.route_topics().items() if k in ex.label_set}
        topics, said = resolve_topics(ex.label_set, given, fallback=cfg.route_descriptions(), required=False)
        log(said)
        encoder = build_encoder(DEFAULT_BACKEND, cfg.router.encoder_model)
        EmbeddingRouter.fit(ex, cfg.router.fallback, encoder, descriptions=topics, builtin_topics=False).save(path)
    router = cfg.router.load_router()
    if ex is not None:
        trained = router.meta.get("training", {})
        if trained.get("data_sha256") != ex.sha256 or trained.get("recipe") != RECIPE:
            why = (f"on different data than router.train_data ({cfg.router.train_data}) holds now"
                   if trained.get("data_sha256") != ex.sha256 else "with an older training recipe")
            log(f"warning: the router in {path} was trained {why}; it is used as it is (delete {path} to retrain)")
    if router.fallback != cfg.router.fallback:
        raise InputError(f"{path}: router falls back to '{router.fallback}', routes.yaml says router.fallback '{cfg.router.fallback}'")
    router.encoder.warm_up()  # the first request must not wait for the encoder's sessions
    return router


def create_app(cfg: RoutesConfig, secrets: Secrets | None = None, router: EmbeddingRouter | None = None) -> FastAPI:
    state = GatewayState(cfg, secrets or Secrets(), router)
    setup_logging(queue_lines=cfg.gateway.log_queue_lines)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        t = cfg.gateway.timeouts
        state.client = upstream_client(httpx.Timeout(connect=t.connect, read=t.first_token, write=t.first_token, pool=t.connect),
                                       cfg.gateway.max_connections)
        if state.router is None:
            state.router = load_or_train_router(cfg)
        watcher = asyncio.create_task(watch_loop_lag(state.metrics.loop_lag_s))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await state.client.aclose()

    app = FastAPI(title="forgetless gateway", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible endpoint that routes each request to the right LoRA adapter.")
    app.state.gateway = state
    app.state.proxies = {name: Proxy(state, name) for name in ("chat/completions", "completions", "responses")}
    for r in (chat_router, completions_router, responses_router, models_router, health_router, admin_router):
        app.include_router(r)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=cfg.gateway.max_body_bytes, timeout=cfg.gateway.body_timeout)
    return app
