"""The routers compared by `forgetless bench routing`, all on the same precomputed embeddings.

Each method: `fit(X, ex, fallback)` on training embeddings, then `decide(X) -> (routes, confidence)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from classifier.data import Examples
from classifier.routers.embedding import EmbeddingRouter

#: one-line route descriptions, as a user would write them (the zero-shot baseline's only knowledge of the routes)
DESCRIPTIONS = {
    "legal": "Legal questions: contracts, clauses, statutes, court cases, liability and legal rights.",
    "medical": "Medical questions: symptoms, diseases, diagnosis, treatment, drugs, anatomy and biomedical research.",
    "code": "Programming: writing, fixing or explaining source code, algorithms and computer science.",
    "math": "Mathematics: arithmetic word problems, algebra, geometry, calculus and probability.",
    "finance": "Finance and accounting: financial statements, banking, payments, investing and taxes.",
    "general": "Everyday chat, general knowledge, trivia, writing help and small talk.",
}


class Forgetless:
    name = "forgetless"

    def fit(self, X, ex: Examples, fallback: str, encoder):
        # the default configuration: the built-in topic lines of the standard routes (classifier/topics.py)
        self.r = EmbeddingRouter.fit_embeddings(X, ex, fallback, encoder, max_folds=5)
        return self

    def decide(self, X):
        ds = self.r.decide_embeddings(X)
        return [d.route for d in ds], np.array([d.route_confidence for d in ds])


class _Sklearn:
    def fit(self, X, ex: Examples, fallback: str, encoder):
        self.m = self.make().fit(X, ex.labels)
        return self

    def decide(self, X):
        p = self.m.predict_proba(X)
        return list(self.m.classes_[p.argmax(1)]), p.max(1)


class LogReg(_Sklearn):
    name = "logistic-regression"

    @staticmethod
    def make():
        return LogisticRegression(max_iter=2000)


class KNN(_Sklearn):
    name = "knn-5"

    @staticmethod
    def make():
        return KNeighborsClassifier(5, metric="cosine")


@dataclass
class ZeroShot:
    name: str = "zero-shot-descriptions"

    def fit(self, X, ex: Examples, fallback: str, encoder):
        self.labels = [lab for lab in ex.label_set if lab in DESCRIPTIONS]
        self.D = encoder.encode([DESCRIPTIONS[lab] for lab in self.labels])
        return self

    def decide(self, X):
        sims = X @ self.D.T
        p = np.exp(sims / 0.05)
        p /= p.sum(1, keepdims=True)
        return [self.labels[i] for i in sims.argmax(1)], p.max(1)


METHODS = [Forgetless, LogReg, KNN, ZeroShot]
