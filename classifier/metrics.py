"""Routing quality metrics, shared by `route train/eval` and the benchmarks."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def routing_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    labels: Sequence[str],
    fallback: str,
    confidence: Sequence[float] | None = None,
) -> dict:
    """Accuracy, macro-F1, per-route P/R/F1, confusion matrix, fallback rate/precision/recall and ECE."""
    yt, yp = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    labels = list(labels)
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    cm = confusion_matrix(yt.astype(str), yp.astype(str), labels=labels)
    sent_fb, is_fb = yp == fallback, yt == fallback
    out = {
        "n": int(len(yt)),
        "accuracy": float((yt == yp).mean()) if len(yt) else 0.0,
        "macro_f1": float(np.mean(f)) if len(f) else 0.0,
        "per_label": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
        "confusion": {"labels": labels, "matrix": cm.tolist()},
        "fallback": fallback,
        "fallback_rate": float(sent_fb.mean()) if len(yt) else 0.0,
        "fallback_precision": float((sent_fb & is_fb).sum() / max(sent_fb.sum(), 1)),
        "fallback_recall": float((sent_fb & is_fb).sum() / max(is_fb.sum(), 1)),
    }
    if confidence is not None:
        out["ece"] = expected_calibration_error(np.asarray(confidence, dtype=float), yt == yp)
    return out


def per_group(y_true: Sequence[str], y_pred: Sequence[str], groups: Sequence[str]) -> dict:
    """Accuracy within each group (a source, or a source family), and where its misrouted texts went most often."""
    yt, yp, g = (np.asarray(a, dtype=object) for a in (y_true, y_pred, groups))
    out = {}
    for name in sorted(set(g)):
        rows = g == name
        wrong = Counter(yp[rows & (yt != yp)])
        out[name] = {"n": int(rows.sum()), "accuracy": float((yt[rows] == yp[rows]).mean()),
                     **({"most_missed_to": wrong.most_common(1)[0][0]} if wrong else {})}
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy − confidence| over equal-width confidence bins, weighted by bin size."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(ece)
