"""aurelio-labs semantic-router (1.1.x) on forgetless's embeddings, leave-one-source-family-out.

Runs in its own virtualenv (.venv-peers: semantic-router pins openai<3, the main one has vLLM's openai),
so it imports nothing from forgetless. Input: an .npz with X (embeddings of the same MiniLM encoder the other
methods use), texts, labels, families. Output on stdout: one JSON object
{VARIANT: {"pred": [...], "conf": [...], "query_ms": [...]}}.

Used as a careful user would: an IndexedRouter whose routes hold the training texts as utterances, a Platt
calibrator and a confidence threshold fitted on source families that are *not* indexed (fitting on indexed
utterances is degenerate: each matches itself at ~1.0). Variants: the fallback as "no route passed the
threshold" (`semantic-router`), and the fallback as a route of its own (`semantic-router+general-route`).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict

import numpy as np
from semantic_router import Route
from semantic_router.encoders.base import DenseEncoder
from semantic_router.routers import IndexedRouter

GRID = [round(x, 2) for x in np.arange(0.0, 0.96, 0.05)]


class Precomputed(DenseEncoder):
    """Looks texts up in the embeddings computed by forgetless's encoder (same vectors for every method)."""

    name: str = "all-MiniLM-L6-v2 (precomputed)"
    table: dict = {}

    def __call__(self, docs):
        return [self.table[d] for d in docs]

    async def acall(self, docs):
        return self(docs)


def split_index_calibration(idx, labels, families):
    """Per label: hold its smallest training family out of the index for calibration when it has two or more;
    otherwise hold every fourth of that label's rows (the label would vanish from the index)."""
    by_label = defaultdict(lambda: defaultdict(list))
    for i in idx:
        by_label[labels[i]][families[i]].append(i)
    index, calib = [], []
    for lab, fams in by_label.items():
        if len(fams) >= 2:
            small = min(fams, key=lambda f: (len(fams[f]), f))
            for f, rows in fams.items():
                (calib if f == small else index).extend(rows)
        else:
            rows = sorted(r for rs in fams.values() for r in rs)
            calib.extend(rows[::4])
            index.extend(r for k, r in enumerate(rows) if k % 4)
    return sorted(index), sorted(calib)


def macro_f1(y, p, labels):
    f1s = []
    for lab in labels:
        tp = sum(a == lab and b == lab for a, b in zip(y, p))
        fp = sum(a != lab and b == lab for a, b in zip(y, p))
        fn = sum(a == lab and b != lab for a, b in zip(y, p))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s))


def decide(router, texts, threshold, fallback):
    preds, confs, ms = [], [], []
    for t in texts:
        s = time.perf_counter()
        choice = router(t, threshold=threshold)
        ms.append((time.perf_counter() - s) * 1000)
        name = getattr(choice, "name", None)
        preds.append(name if name else fallback)
        confs.append(float(getattr(choice, "confidence", None) or 0.0))
    return preds, confs, ms


def run(X, texts, labels, families, fallback):
    enc = Precomputed(table={t: x.tolist() for t, x in zip(texts, X)})
    label_set = sorted(set(labels))
    out = {v: {"pred": [None] * len(texts), "conf": [0.0] * len(texts), "query_ms": []}
           for v in ("semantic-router", "semantic-router+general-route")}
    for fam in sorted(set(families)):
        test = [i for i, f in enumerate(families) if f == fam]
        train = [i for i, f in enumerate(families) if f != fam]
        if fallback not in {labels[i] for i in train}:
            continue
        index, calib = split_index_calibration(train, labels, families)
        for variant, own_route in (("semantic-router", False), ("semantic-router+general-route", True)):
            utter = defaultdict(list)
            for i in index:
                if own_route or labels[i] != fallback:
                    utter[labels[i]].append(texts[i])
            router = IndexedRouter(encoder=enc, routes=[Route(name=n, utterances=u) for n, u in sorted(utter.items())])
            y_cal = [labels[i] for i in calib]
            router.fit([texts[i] for i in calib], [y if (own_route or y != fallback) else None for y in y_cal])
            # the threshold a careful user would pick: best macro-F1 on the calibration families. The router's
            # top route and its calibrated confidence are read once (threshold 0); with a monotone calibrator a
            # route below the top can never pass a bar the top failed, so this equals calling it per threshold.
            top, conf, _ = decide(router, [texts[i] for i in calib], 0.0, fallback)
            best_t, best = None, -1.0
            for t in GRID:
                p = [name if c >= t else fallback for name, c in zip(top, conf)]
                score = macro_f1(y_cal, p, label_set)
                if score > best:
                    best_t, best = t, score
            p, c, ms = decide(router, [texts[i] for i in test], best_t, fallback)
            for i, pi, ci in zip(test, p, c):
                out[variant]["pred"][i] = pi
                out[variant]["conf"][i] = ci
            out[variant]["query_ms"].extend(ms)
    return out


def main():
    data = np.load(sys.argv[1], allow_pickle=False)
    fallback = sys.argv[2] if len(sys.argv) > 2 else "general"
    res = run(data["X"].astype(np.float32), [str(t) for t in data["texts"]], [str(x) for x in data["labels"]],
              [str(f) for f in data["families"]], fallback)
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
