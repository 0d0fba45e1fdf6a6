"""Per-route confidence thresholds, tuned on held-out probabilities.

Decision rule: take the most probable route; keep it if its probability clears that route's threshold,
otherwise send the request to the fallback route (the base model).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

GRID = np.round(np.arange(0.0, 0.95, 0.05), 2)


def apply_thresholds(proba: np.ndarray, labels: list[str], fallback: str, thresholds: dict[str, float]) -> list[str]:
    fb = labels.index(fallback)
    top = proba.argmax(axis=1)
    conf = proba[np.arange(len(top)), top]
    thr = np.array([thresholds.get(lab, 0.0) for lab in labels])
    chosen = np.where(conf >= thr[top], top, fb)
    return [labels[i] for i in chosen]


def tune_thresholds(proba: np.ndarray, y: list[str], labels: list[str], fallback: str, passes: int = 2) -> dict[str, float]:
    """Coordinate ascent over a grid, one route at a time, maximising macro-F1 of the decisions."""
    thresholds = {lab: 0.0 for lab in labels if lab != fallback}

    def score(th: dict[str, float]) -> float:
        return f1_score(y, apply_thresholds(proba, labels, fallback, th), labels=labels, average="macro", zero_division=0)

    best = score(thresholds)
    for _ in range(passes):
        for lab in list(thresholds):
            for t in GRID:
                trial = {**thresholds, lab: float(t)}
                s = score(trial)
                if s > best + 1e-9:
                    best, thresholds = s, trial
    return thresholds
