"""The routing table `forgetless audit` writes and the gateway reads: which model serves each route, and how
good every usable model is on every route (the capability matrix, as gain over the base).

File format (JSON, written atomically):
    {"routes":  {ROUTE: MODEL},                    # top-1 policy: the best usable model per route
     "quality": {ROUTE: {MODEL: gain}},            # relative NLL gain over the base (base = 0, higher is better)
     "flagged": [ADAPTER, ...],                    # adapters that forget too much; top-1 uses them only through
     "sure": {ROUTE: ADAPTER}, "sure_min": 0.9,    # a flagged adapter that clearly wins its own route serves it
                                                   # only when the router's probability for the route >= sure_min
     "sure_mins": {ROUTE: p}, "sure_router": FP,   # per-route thresholds the audit fitted for the router with
                                                   # fingerprint FP (another router gets sure_min)
     "adopted": {ADAPTER: {"path": ..., "route": ...}}}   # adapters admitted by `audit --candidate`
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from classifier.errors import InputError

#: default probability at or above which a route's sure-only adapter serves it
SURE_MIN = 0.9


@dataclass
class RoutingTable:
    routes: dict[str, str] = field(default_factory=dict)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    flagged: list[str] = field(default_factory=list)
    adopted: dict[str, dict] = field(default_factory=dict)
    source: str = "forgetless audit"
    #: route -> flagged adapter, used for that route only when the router is at least `sure_min` sure: an adapter
    #: that forgets costs quality only on the other prompts that reach it (general or other domains'), and few of
    #: them get a calibrated probability that high for its route
    sure: dict[str, str] = field(default_factory=dict)
    sure_min: float = SURE_MIN
    #: per-route thresholds fitted by the audit from where the other eval sets' prompts land (sure_thresholds.py); they
    #: hold for the router they were fitted on (`sure_router`, its fingerprint), any other router gets `sure_min`
    sure_mins: dict[str, float] = field(default_factory=dict)
    sure_router: str | None = None

    def __bool__(self) -> bool:
        return bool(self.routes)

    @classmethod
    def load(cls, path: Path | None) -> "RoutingTable":
        """An absent file is an empty table (nothing audited yet); a damaged one is an error naming the file."""
        if path is None or not Path(path).is_file():
            return cls()
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: routing table is not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("routes"), dict):
            raise InputError(f"{path}: routing table needs a 'routes' object (route -> model)")
        routes = doc["routes"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in routes.items()):
            raise InputError(f"{path}: 'routes' must map route names to model names")
        quality = doc.get("quality", {})
        ok = isinstance(quality, dict) and all(
            isinstance(row, dict) and all(isinstance(v, (int, float)) for v in row.values()) for row in quality.values())
        if not ok:
            raise InputError(f"{path}: 'quality' must map routes to {{model: number}}")
        adopted = doc.get("adopted", {})
        if not isinstance(adopted, dict) or not all(isinstance(v, dict) and isinstance(v.get("path"), str) for v in adopted.values()):
            raise InputError(f"{path}: 'adopted' must map adapter names to {{\"path\": ...}}")
        sure, sure_min = doc.get("sure", {}), doc.get("sure_min", SURE_MIN)
        if not isinstance(sure, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sure.items()):
            raise InputError(f"{path}: 'sure' must map route names to adapter names")
        if isinstance(sure_min, bool) or not isinstance(sure_min, (int, float)) or not 0.5 <= sure_min <= 1.0:
            raise InputError(f"{path}: 'sure_min' must be a probability between 0.5 and 1")
        sure_mins, sure_router = doc.get("sure_mins", {}), doc.get("sure_router")
        if not isinstance(sure_mins, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and 0.5 <= v <= 1.0
                for k, v in sure_mins.items()):
            raise InputError(f"{path}: 'sure_mins' must map route names to probabilities between 0.5 and 1")
        if sure_router is not None and not isinstance(sure_router, str):
            raise InputError(f"{path}: 'sure_router' must be a router fingerprint (a string)")
        return cls(dict(routes), {r: {m: float(v) for m, v in row.items()} for r, row in quality.items()},
                   [str(x) for x in doc.get("flagged", [])], adopted, str(doc.get("source", "forgetless audit")),
                   dict(sure), float(sure_min), {k: float(v) for k, v in sure_mins.items()}, sure_router)

    def check_models(self, known: set[str], where) -> None:
        """Every route must go to a model that is served (base, configured or adopted adapter)."""
        for route, model in [*self.routes.items(), *self.sure.items()]:
            if model not in known:
                raise InputError(f"{where}: route '{route}' goes to '{model}', which is not served "
                                 f"(models: {', '.join(sorted(known))})")

    def to_json(self) -> str:
        return json.dumps({"routes": self.routes, "quality": self.quality, "flagged": self.flagged,
                           "sure": self.sure, "sure_min": self.sure_min, "sure_mins": self.sure_mins,
                           "sure_router": self.sure_router, "adopted": self.adopted,
                           "source": self.source}, indent=2) + "\n"

    def fitted_for(self, router_fp: str | None) -> bool:
        """Whether the per-route thresholds hold for the router `router_fp` (None: the caller does not say)."""
        return self.sure_router is None or router_fp is None or router_fp == self.sure_router

    def sure_threshold(self, route: str, router_fp: str | None = None) -> float:
        """The probability at which `route`'s sure-only adapter serves: the audit's per-route value when it was
        fitted for this router, else the default `sure_min`."""
        return self.sure_mins.get(route, self.sure_min) if self.fitted_for(router_fp) else self.sure_min

    def stale_for(self, router_fp: str | None) -> str | None:
        """A one-line warning when the per-route sure thresholds were fitted for another router than `router_fp`."""
        if self.sure_mins and not self.fitted_for(router_fp):
            return (f"routing table's sure-only thresholds were fitted for router {self.sure_router}, the loaded router "
                    f"is {router_fp}: every sure-only route uses {self.sure_min:g} until `forgetless audit` runs again")
        return None

    def model_for(self, route: str, probability: float | None = None, router_fp: str | None = None) -> str | None:
        """Top-1 policy: the route's sure-only adapter when the router is sure enough, else the route's model."""
        if route in self.sure and probability is not None and probability >= self.sure_threshold(route, router_fp):
            return self.sure[route]
        return self.routes.get(route)

    def expected_quality(self, probs: dict[str, float], available: set[str], base: str) -> str:
        """argmax over usable models m of Σ_route p(route | prompt) × quality(m, route).

        The base scores 0 on every route, so an adapter is chosen only when its expected gain is positive:
        an adapter that wins its own domain but loses elsewhere is avoided when the router is unsure. Flagged
        adapters stay candidates here: their measured losses are in `quality`, so they are used only where the
        router is sure enough of their domain for the gain to outweigh the forgetting.
        """
        models = {m for row in self.quality.values() for m in row} & available
        models.discard(base)
        best, best_score = base, 0.0
        for m in sorted(models):
            score = sum(p * self.quality.get(r, {}).get(m, 0.0) for r, p in probs.items())
            if score > best_score + 1e-12:
                best, best_score = m, score
        return best
