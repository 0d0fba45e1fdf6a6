"""Which model answers a request: explicit model name, forced route header, or the router's decision."""

from __future__ import annotations

import time

from gateway.completions.chat_markup import conversation, written_by_template
from gateway.config import RouterConfig
from gateway.errors import GatewayError
from gateway.state import GatewayState, Target

ROUTE_HEADER = "x-forgetless-route"


_TEXT_PARTS = ("text", "input_text")  # chat's text parts; the Responses API's


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: route on the text parts only
        return "\n".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") in _TEXT_PARTS)
    return ""


def chat_routing_text(messages: list[dict], policy: RouterConfig) -> str:
    users = [_text_of(m.get("content")) for m in messages if m.get("role") == "user"]
    users = [u for u in users if u.strip()]
    if policy.policy == "last_user":
        return users[-1] if users else ""
    system = [_text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    return "\n".join([*system, *users[-policy.last_k:]]).strip()


def responses_routing_text(body: dict, policy: RouterConfig) -> str:
    """The Responses API's conversation read as chat messages: `instructions` is the system prompt, a string
    `input` one user turn, and the message items of a list `input` (other items, e.g. tool output, are skipped)."""
    messages = [{"role": "system", "content": body["instructions"]}] if isinstance(body.get("instructions"), str) else []
    given = body["input"]
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    else:
        messages += [m for m in given if isinstance(m, dict) and m.get("type") in (None, "message") and "role" in m]
    return chat_routing_text(messages, policy)


def prompt_routing_text(text: str, policy: RouterConfig) -> str:
    """A completions prompt as the router reads it: one written in a chat template is read as its conversation,
    under the same policy as a chat request (gateway/completions/chat_markup.py), without the template's own default
    system line; any other prompt as it is."""
    messages = conversation(text)
    if messages is None:
        return text
    return (chat_routing_text([m for m in messages if not written_by_template(m)], policy)
            or "\n".join(m["content"] for m in messages if m["content"]))


def completion_routing_text(prompt, policy: RouterConfig) -> str:
    if isinstance(prompt, str):
        return prompt_routing_text(prompt, policy)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt_routing_text(prompt[0], policy)
    return ""  # token ids: the completions endpoint reads them through the upstream (completions/token_prompts.py)


async def choose_target(state: GatewayState, requested: str, routing_text: str, forced_route: str | None,
                        admin: bool = False) -> Target:
    cfg = state.cfg.router
    if forced_route is not None:
        forced_route = forced_route.strip()
        if state.router and forced_route in state.router.labels:
            # a forced route is a certain one: a sure-only adapter serves it
            return Target(state.route_model(forced_route, 1.0), route=forced_route, forced=True)
        if forced_route in state.known_models():
            return Target(forced_route, route=forced_route, forced=True)
        choices = sorted({*(state.router.labels if state.router else []), *state.known_models()})
        raise GatewayError(400, f"header {ROUTE_HEADER}: unknown route '{forced_route}' (routes: {', '.join(choices)})",
                           param=ROUTE_HEADER, code="unknown_route")
    if requested == cfg.virtual_model:
        router = state.router
        if router is None:
            raise GatewayError(503, "router not loaded", code="router_unavailable", headers={"Retry-After": "5"})
        if not routing_text.strip():
            return Target(state.base, route=router.fallback, confidence=None, router_ms=0.0, fallback="no-text")
        t = time.perf_counter()
        decision = await state.decide(router, routing_text)
        ms = (time.perf_counter() - t) * 1000.0
        state.metrics.router_ms.observe(ms)
        if cfg.selection == "expected_quality" and state.table.quality:
            model = state.table.expected_quality(decision.probs, set(state.known_models()), state.base)
            fallback = "expected-quality" if model == state.base and decision.route != router.fallback else None
            return Target(model, route=decision.route, confidence=decision.probability, router_ms=ms, fallback=fallback)
        model = state.route_model(decision.route, decision.probs.get(decision.route, decision.probability))
        fallback = None
        if decision.route == router.fallback and decision.top and decision.top[0][0] != router.fallback:
            fallback = "low-confidence"
        elif model == state.base and decision.route != router.fallback:
            fallback = "quality-gate" if state.table.routes.get(decision.route) == state.base else "route-unavailable"
        return Target(model, route=decision.route, confidence=decision.probability, router_ms=ms, fallback=fallback)
    if requested in state.known_models():
        return Target(requested)
    if admin and requested in state.candidates:
        return Target(requested, exact=True)
    raise GatewayError(
        404, f"The model '{requested}' does not exist. Available: {', '.join([cfg.virtual_model, *state.known_models()])}",
        param="model", code="model_not_found",
    )
