"""forgetless's router: sentence embeddings + calibrated head + per-route thresholds tuned on held-out sources."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from pathlib import Path
from threading import Lock
from typing import Sequence

import numpy as np
from sklearn.model_selection import GroupKFold, LeaveOneGroupOut, StratifiedKFold

from classifier.data import Examples, source_family
from classifier.encoders import DEFAULT_BACKEND, Encoder, build_encoder
from classifier.errors import InputError
from classifier.head import Head, temper
from classifier.metrics import routing_metrics
from classifier.routers.base import Decision, Router
from classifier.thresholds import apply_thresholds, tune_thresholds
from classifier.topics import as_lines, resolve_topics

FORMAT_VERSION = 1
#: bumped whenever training changes what a router learns from the same data (2: per-source weighting, 3: topic
#: lists per route, built-in ones for the standard routes; 4: embeddings centred on the training mean; 5: four
#: more built-in topic lines for the fallback route), so caches keyed by the data's hash can tell an older router
#: from a current one
RECIPE = 5
ROUTER_FILE, HEAD_FILE = "router.json", "head.npz"


def held_out_folds(ex: Examples, y: list[str], max_folds: int = 30):
    """Validation folds that hold out whole source families when sources are given, else stratified rows."""
    groups = [source_family(s) for s in ex.sources]
    if all(groups) and len(set(groups)) >= 3:
        n = len(set(groups))
        splitter = LeaveOneGroupOut() if n <= max_folds else GroupKFold(n_splits=max_folds)
        return list(splitter.split(np.zeros(len(y)), y, groups)), f"held-out source families ({n})"
    k = max(2, min(5, min(y.count(lab) for lab in set(y))))
    return list(StratifiedKFold(k, shuffle=True, random_state=0).split(np.zeros(len(y)), y)), f"stratified {k}-fold (no sources)"


class EmbeddingRouter(Router):
    def __init__(self, encoder: Encoder, head: Head, fallback: str, thresholds: dict[str, float],
                 meta: dict | None = None, cache_size: int = 4096):
        self.encoder, self.head, self.fallback, self.thresholds = encoder, head, fallback, thresholds
        self.labels = head.labels
        self.meta = meta or {}
        self._cache: OrderedDict[str, Decision] = OrderedDict()
        self._cache_size, self._lock = cache_size, Lock()
        self._fp: str | None = None

    def fingerprint(self) -> str:
        """Identifies what decides routes (labels, thresholds, calibration, training data and recipe): thresholds
        fitted on this router's probabilities (the audit's sure-only ones) hold for it and no other."""
        if self._fp is None:  # a router does not change once built; the gateway asks on every request
            key = {"labels": self.labels, "thresholds": self.thresholds, "temperature": self.head.temperature,
                   "training": self.meta.get("training", {})}
            self._fp = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return self._fp

    # ---- training -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, ex: Examples, fallback: str = "general", encoder: Encoder | None = None,
            progress: bool = False, log=lambda msg: None, descriptions: dict[str, str | list[str]] | None = None,
            builtin_topics: bool = True) -> "EmbeddingRouter":
        encoder = encoder or build_encoder(DEFAULT_BACKEND)
        X = encoder.encode(ex.texts, progress=progress)
        return cls.fit_embeddings(X, ex, fallback, encoder, log=log, descriptions=descriptions,
                                  builtin_topics=builtin_topics)

    @classmethod
    def fit_embeddings(cls, X: np.ndarray, ex: Examples, fallback: str, encoder: Encoder, log=lambda msg: None,
                       max_folds: int = 30, descriptions: dict[str, str | list[str]] | None = None,
                       builtin_topics: bool = True) -> "EmbeddingRouter":
        """Fit on precomputed embeddings `X` of `ex.texts` (benchmarks reuse one encoding across folds).

        `descriptions` (route -> a line or a list of topic lines) are the user's zero-shot lines; routes without
        them get classifier/topics.py's built-in lines when `builtin_topics`, and the zero-shot part of the head
        is on when every route has lines.
        """
        labels = ex.label_set
        given = {k: as_lines(v, f"route descriptions: {k!r}") for k, v in (descriptions or {}).items()}
        topics, said = resolve_topics(labels, given, builtin=builtin_topics)
        log(said)
        protos, proto_labels = None, None
        if topics:
            proto_labels = [lab for lab in labels for _ in topics[lab]]
            protos = encoder.encode([line for lab in labels for line in topics[lab]])
        y = list(ex.labels)
        y_idx = np.array([labels.index(v) for v in y])
        families = [source_family(s) for s in ex.sources]
        groups = families if all(families) else None  # rows without a source: balance routes only
        folds, scheme = held_out_folds(ex, y, max_folds)
        log(f"validating on {len(folds)} folds: {scheme}")
        raw = np.zeros((len(y), len(labels)), dtype=np.float64)
        for train, test in folds:
            present = sorted({y[i] for i in train})
            lines = None if protos is None else [j for j, lab in enumerate(proto_labels) if lab in present]
            head = Head.fit(X[train], [y[i] for i in train], present,
                            prototypes=None if lines is None else protos[lines],
                            prototype_labels=None if lines is None else [proto_labels[j] for j in lines],
                            groups=None if groups is None else [groups[i] for i in train])
            raw[np.ix_(test, [labels.index(lab) for lab in present])] = head.raw_proba(X[test])
        head = Head.fit(X, y, labels, prototypes=protos, prototype_labels=proto_labels, groups=groups)
        head.fit_temperature(raw, y_idx)
        calibrated = temper(raw, head.temperature)
        thresholds = tune_thresholds(calibrated, y, labels, fallback)
        pred = apply_thresholds(calibrated, labels, fallback, thresholds)
        conf = calibrated.max(axis=1)
        validation = routing_metrics(y, pred, labels, fallback, confidence=np.where(
            np.array(pred) == np.array(labels)[calibrated.argmax(1)], conf, 1 - conf))
        validation["scheme"] = scheme
        meta = {
            "training": {
                "data_sha256": ex.sha256,
                "examples": len(y),
                "label_counts": {lab: y.count(lab) for lab in labels},
                "descriptions": topics or {},
                "weighting": "per source family within each route" if groups else "per route",
                "recipe": RECIPE,
            },
            "validation": validation,
        }
        return cls(encoder, head, fallback, thresholds, meta)

    def decide_embeddings(self, X: np.ndarray) -> list[Decision]:
        return self._decisions(self.head.proba(X))

    # ---- inference ------------------------------------------------------------------------------
    def _decisions(self, proba: np.ndarray) -> list[Decision]:
        routes = apply_thresholds(proba, self.labels, self.fallback, self.thresholds)
        out = []
        for row, route in zip(proba, routes):
            order = np.argsort(-row)[:3]
            top = [(self.labels[i], float(row[i])) for i in order]
            probs = {lab: float(p) for lab, p in zip(self.labels, row)}
            out.append(Decision(route, top[0][1], top, route == self.fallback, probs))
        return out

    def decide_batch(self, texts: Sequence[str]) -> list[Decision]:
        if not texts:
            return []
        return self._decisions(self.head.proba(self.encoder.encode(list(texts), batch_size=64)))

    def cached(self, text: str) -> Decision | None:
        """The decision already made for this exact text, if it is still in the cache (no encoding)."""
        with self._lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
            return hit

    def decide(self, text: str) -> Decision:
        if (hit := self.cached(text)) is not None:
            return hit
        decision = self._decisions(self.head.proba_one(self.encoder.encode_one(text))[None, :])[0]
        with self._lock:
            self._cache[text] = decision
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return decision

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / HEAD_FILE, **self.head.arrays())
        doc = {
            "format_version": FORMAT_VERSION,
            "kind": "embedding",
            "labels": self.labels,
            "fallback": self.fallback,
            "thresholds": self.thresholds,
            "temperature": self.head.temperature,
            "knn_k": self.head.k,
            "encoder": self.encoder.identity(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **self.meta,
        }
        tmp = out / (ROUTER_FILE + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(out / ROUTER_FILE)  # router.json last: a directory without it is not a router
        return out

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder | None = None, encoder_model: str | Path | None = None) -> "EmbeddingRouter":
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: " + ("is a file, not a router directory" if path.exists() else "router directory not found"))
        doc_path, head_path = path / ROUTER_FILE, path / HEAD_FILE
        for f in (doc_path, head_path):
            if not f.is_file():
                raise InputError(f"{f}: missing; {path} is not a saved router (train one with `forgetless route train`)")
        try:
            doc = json.loads(doc_path.read_text())
            labels, fallback = list(doc["labels"]), doc["fallback"]
            thresholds = {str(k): float(v) for k, v in doc["thresholds"].items()}
            ident = doc["encoder"]
            if doc.get("format_version") != FORMAT_VERSION:
                raise InputError(f"{doc_path}: format_version {doc.get('format_version')!r} is not {FORMAT_VERSION}")
        except InputError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{doc_path}: not a valid router file ({type(exc).__name__}: {exc})") from None
        try:
            with np.load(head_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("weight", "bias", "memory", "memory_labels")}
                arrays["prototypes"], arrays["prototype_labels"] = Head.topics_from_arrays(
                    labels, *(z[k] if k in z.files else None for k in ("prototypes", "prototype_labels")))
                arrays["center"] = z["center"] if "center" in z.files else None  # None: saved before centring
        except Exception as exc:  # corrupted zip, missing array, pickled content
            raise InputError(f"{head_path}: unreadable head arrays ({type(exc).__name__}: {exc})") from None
        protos = arrays["prototypes"]
        center = arrays["center"]
        if arrays["weight"].shape[0] != len(labels) or fallback not in labels or (
                protos is not None and protos.shape[1] != arrays["weight"].shape[1]) or (
                center is not None and center.shape != (arrays["weight"].shape[1],)):
            raise InputError(f"{path}: head arrays do not match the labels in {ROUTER_FILE}")
        encoder = encoder or build_encoder(ident.get("backend", ""), encoder_model)
        mine = encoder.identity()
        for key in ("backend", "weights_sha256", "dim"):
            if mine.get(key) != ident.get(key):
                raise InputError(
                    f"{path}: router was trained with encoder {ident.get('backend')}:{ident.get('model')} "
                    f"({key}={str(ident.get(key))[:16]}), but the configured encoder has {key}={str(mine.get(key))[:16]}"
                )
        if arrays["weight"].shape[1] != mine["dim"]:
            raise InputError(f"{head_path}: head expects {arrays['weight'].shape[1]}-d embeddings, encoder gives {mine['dim']}")
        head = Head(labels, **arrays, k=int(doc.get("knn_k", 10)), temperature=float(doc.get("temperature", 1.0)))
        meta = {k: doc[k] for k in ("training", "validation") if k in doc}
        return cls(encoder, head, fallback, thresholds, meta)
