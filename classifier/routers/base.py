"""The Router interface: one decision per text, plus the evaluation every router shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

from classifier.metrics import per_group, routing_metrics


@dataclass(frozen=True)
class Decision:
    route: str  # the route to send the request to
    probability: float  # calibrated probability of the route the classifier ranked first
    top: list[tuple[str, float]] = field(default_factory=list)  # best routes first
    fallback: bool = False  # True when the request goes to the fallback route (the base model)
    probs: dict[str, float] = field(default_factory=dict)  # calibrated probability of every route

    @property
    def route_confidence(self) -> float:
        """Probability that the chosen route is right (the fallback stands in for the top route when unsure)."""
        return self.probability if self.top and self.route == self.top[0][0] else 1.0 - self.probability

    def as_dict(self) -> dict:
        return {
            "route": self.route,
            "probability": round(self.probability, 4),
            "fallback": self.fallback,
            "top": [{"route": r, "probability": round(p, 4)} for r, p in self.top],
        }


class Router(ABC):
    """Picks a route for each text. `labels` are the route names; `fallback` is the base model's route."""

    labels: list[str]
    fallback: str

    @abstractmethod
    def decide_batch(self, texts: Sequence[str]) -> list[Decision]: ...

    def decide(self, text: str) -> Decision:
        return self.decide_batch([text])[0]

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [d.route for d in self.decide_batch(texts)]

    def evaluate(self, texts: Sequence[str], labels: Sequence[str], groups: Sequence[str] | None = None,
                 progress: bool = False) -> dict:
        """Routing metrics of deciding each text alone, exactly as the gateway does (a batch's vectors can differ
        slightly: see the int8 encoder), plus accuracy per group (`per_source`) when `groups` are given."""
        decisions = []
        if progress:
            from rich.console import Console

            from classifier.progress import LoggedProgress

            with LoggedProgress(console=Console(stderr=True)) as bar:  # stdout may carry --json
                task = bar.add_task(f"routing {len(texts)} texts", total=len(texts))
                for t in texts:
                    decisions.append(self.decide(t))
                    bar.advance(task)
        else:
            decisions = [self.decide(t) for t in texts]
        routes = [d.route for d in decisions]
        out = routing_metrics(labels, routes, self.labels, self.fallback, confidence=[d.route_confidence for d in decisions])
        if groups is not None:
            out["per_source"] = per_group(labels, routes, groups)
        return out
