"""The classification head on top of the embeddings: logistic regression + nearest-neighbour vote.

Trained with scikit-learn, stored as plain arrays (.npz, no pickles) and evaluated with numpy, so a
saved router can be inspected and loaded without unpickling anything. The two parts fail differently
(the linear model generalises across phrasings, the neighbour vote keeps rare sub-topics such as contract
clauses), and averaging them was worth +3–5 macro-F1 points on held-out sources of the routing dev set.
When routes come with topic lines (classifier/topics.py), a third, zero-shot part scores each route by the
prompt's similarity to its closest line; it knows nothing of any training set's phrasing, which helps most on
prompts from unseen sources (+4 macro-F1 points on held-out source families of the routing dev set with one line
per route, +7 with the built-in topic lists). Probabilities are calibrated by a temperature fitted on held-out
folds. All parts see the embeddings centred on the training mean (see `centred`).

When the training rows name their sources, the linear model weighs every source family equally within its
route (and every route equally): otherwise one large source (330 bar-exam questions among the legal prompts)
teaches the route its own style, and prompts phrased like a smaller source fall through. Measured on held-out
source families of the routing dev set (`forgetless bench routing`): macro-F1 0.824 → 0.840, fallback precision
0.64 → 0.68. Weighting the neighbour vote the same way did not help (0.833), so it stays unweighted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

_BLAS = None


def _one_blas_thread():
    """The head's products are small; with BLAS's default two threads, those threads keep spinning after each
    product and take the cores from ONNX Runtime's next run (measured: a batch of 64 decisions 83 → 64 ms).
    The controller is created on first use, when numpy's BLAS is loaded; entering its limit costs ~8 µs. This
    limit is for single-threaded callers: OpenBLAS ignores one set from a worker thread, so `forgetless serve`,
    whose router decides on worker threads, sets one BLAS thread for its whole process (deploy/serve.py)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def balanced_weights(y: list[str], groups: list[str] | None) -> np.ndarray | None:
    """Sample weights giving every route the same total weight and, within a route, every group (source family)
    the same share. None when there are no groups: the caller then balances routes only."""
    if groups is None:
        return None
    keys = list(zip(y, groups))
    count: dict[tuple[str, str], int] = {}
    for k in keys:
        count[k] = count.get(k, 0) + 1
    groups_per_label: dict[str, int] = {}
    for lab, _ in count:
        groups_per_label[lab] = groups_per_label.get(lab, 0) + 1
    n_labels = len(groups_per_label)
    w = np.array([1.0 / (count[k] * groups_per_label[k[0]] * n_labels) for k in keys])
    return w * (len(keys) / w.sum())  # mean weight 1, so the regularisation strength C keeps its meaning


def _softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis: rows of a batch, or one row."""
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class Head:
    labels: list[str]
    weight: np.ndarray  # (L, D) logistic-regression coefficients
    bias: np.ndarray  # (L,)
    memory: np.ndarray  # (N, D) training embeddings for the neighbour vote
    memory_labels: np.ndarray  # (N,) label indices
    k: int = 10
    temperature: float = 1.0
    prototypes: np.ndarray | None = None  # (P, D) embeddings of the routes' topic lines
    prototype_labels: np.ndarray | None = None  # (P,) route index of each line
    zero_shot_weight: float = 1.0
    zero_shot_temperature: float = 0.05
    center: np.ndarray | None = None  # (D,) mean training embedding (None: a router saved before centring)

    @classmethod
    def fit(cls, X: np.ndarray, y: list[str], labels: list[str], *, C: float = 10.0, k: int = 10,
            prototypes: np.ndarray | None = None, prototype_labels: Sequence[str] | None = None,
            groups: list[str] | None = None) -> "Head":
        """`groups` (one source family per row, or None) switches on per-source balancing of the linear model.
        `prototypes` are embedded topic lines and `prototype_labels` the route of each."""
        center = X.mean(axis=0).astype(np.float32)
        X = centred(X, center)
        if prototypes is not None:
            prototypes = centred(prototypes, center)
        weights = balanced_weights(y, groups)
        lr = LogisticRegression(C=C, max_iter=3000, class_weight="balanced" if weights is None else None)
        lr.fit(X, y, sample_weight=weights)
        order = [list(lr.classes_).index(lab) for lab in labels]
        index = {lab: i for i, lab in enumerate(labels)}
        return cls(
            labels=list(labels),
            weight=lr.coef_[order].astype(np.float32),
            bias=lr.intercept_[order].astype(np.float32),
            memory=X.astype(np.float16),
            memory_labels=np.array([index[v] for v in y], dtype=np.int32),
            k=k,
            prototypes=None if prototypes is None else prototypes.astype(np.float32),
            prototype_labels=None if prototypes is None else np.array([index[v] for v in prototype_labels], dtype=np.int32),
            center=center,
        )

    def raw_proba(self, X: np.ndarray) -> np.ndarray:
        with _one_blas_thread():
            return self._raw_proba(X if self.center is None else centred(X, self.center))

    def _raw_proba(self, X: np.ndarray) -> np.ndarray:
        p_lr = _softmax(X @ self.weight.T + self.bias)
        sims = X @ self._memory32().T
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        w = 1.0 / np.maximum(1.0 - np.take_along_axis(sims, top, axis=1), 1e-6)  # inverse cosine distance
        p_knn = np.zeros_like(p_lr)
        rows = np.repeat(np.arange(len(X)), k)
        np.add.at(p_knn, (rows, self.memory_labels[top].ravel()), w.ravel())
        p_knn /= p_knn.sum(axis=1, keepdims=True)
        p = 0.5 * (p_lr + p_knn)
        if self.prototypes is None:
            return p
        return self._with_zero_shot(p, X)

    def _with_zero_shot(self, p: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Mix the zero-shot part into `p`: each route scored by its closest topic line (routes without lines get
        nothing). `X` is a batch (n, D) or one embedding (D,)."""
        lines, routes, starts = self._topic_index()
        sims = X @ lines.T
        closest = np.full((*X.shape[:-1], len(self.labels)), -np.inf, dtype=sims.dtype)
        closest[..., routes] = np.maximum.reduceat(sims, starts, axis=-1)
        p_zs = _softmax(closest / self.zero_shot_temperature)
        return (p + self.zero_shot_weight * p_zs) / (1.0 + self.zero_shot_weight)

    def proba(self, X: np.ndarray) -> np.ndarray:
        return temper(self.raw_proba(X), self.temperature)

    def _memory32(self) -> np.ndarray:
        """The neighbour memory as float32 rows (N, D), converted once per memory array, not per call."""
        source, m = getattr(self, "_m32", (None, None))
        if source is not self.memory:
            m = np.ascontiguousarray(self.memory, dtype=np.float32)
            self._m32 = (self.memory, m)
        return m

    def _topic_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Topic lines grouped by route: (lines sorted by route, routes having lines, where each route's lines
        start). Built once per set of lines."""
        source, idx = getattr(self, "_topics", (None, None))
        if source is not self.prototypes or idx is None:
            order = np.argsort(self.prototype_labels, kind="stable")
            routes, starts = np.unique(self.prototype_labels[order], return_index=True)
            idx = (np.ascontiguousarray(self.prototypes[order], dtype=np.float32), routes, starts)
            self._topics = (self.prototypes, idx)
        return idx

    def proba_one(self, x: np.ndarray) -> np.ndarray:
        """`proba` of a single embedding (D,), the same numbers to ~1e-6 (float32 sums in another order) in less
        time (2-core AMD EPYC, one BLAS thread: 0.105 ms against the batch code's 0.12 ms for one row): a request
        decides one text, and for one row the batch code's bookkeeping (2-d partitions and scatter-adds for the
        neighbour vote) costs more than its arithmetic. The rest is one matrix-vector product over the neighbour
        memory (N x D floats, memory-bound)."""
        with _one_blas_thread():
            x = np.asarray(x, dtype=np.float32)
            if self.center is not None:
                x = centred(x, self.center)
            p_lr = _softmax(self.weight @ x + self.bias)
            sims = self._memory32() @ x
            k = min(self.k, sims.shape[0])
            top = np.argpartition(-sims, k - 1)[:k]
            w = 1.0 / np.maximum(1.0 - sims[top], 1e-6)  # inverse cosine distance, as in `_raw_proba`
            votes = np.bincount(self.memory_labels[top], weights=w, minlength=len(self.labels))
            p = 0.5 * (p_lr + votes / votes.sum())
            if self.prototypes is not None:
                p = self._with_zero_shot(p, x)
            return temper(p, self.temperature)

    def fit_temperature(self, raw: np.ndarray, y_idx: np.ndarray) -> float:
        """Temperature minimising held-out negative log-likelihood."""

        def nll(log_t: float) -> float:
            p = temper(raw, float(np.exp(log_t)))
            return float(-np.log(np.maximum(p[np.arange(len(y_idx)), y_idx], 1e-12)).mean())

        res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
        self.temperature = float(np.exp(res.x))
        return self.temperature

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"weight": self.weight, "bias": self.bias, "memory": self.memory, "memory_labels": self.memory_labels}
        if self.center is not None:
            out["center"] = self.center
        if self.prototypes is not None:
            out["prototypes"] = self.prototypes
            out["prototype_labels"] = self.prototype_labels
        return out

    @staticmethod
    def topics_from_arrays(labels: list[str], prototypes: np.ndarray | None,
                           prototype_labels: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Checked prototype arrays from a saved head. Routers saved before topic lists hold one row per route
        (zeros where a route had no description) and no prototype_labels: read as one line per route."""
        if prototypes is None:
            return None, None
        if prototype_labels is None:
            if prototypes.shape[0] != len(labels):
                raise ValueError(f"prototypes have {prototypes.shape[0]} rows for {len(labels)} labels")
            keep = np.flatnonzero(np.abs(prototypes).sum(axis=1) > 0)
            return prototypes[keep], keep.astype(np.int32)
        if prototype_labels.shape != (prototypes.shape[0],) or prototype_labels.min(initial=0) < 0 \
                or prototype_labels.max(initial=0) >= len(labels):
            raise ValueError("prototype_labels do not match the prototypes and labels")
        return prototypes, prototype_labels.astype(np.int32)


def centred(X: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Embeddings minus the training mean, back on the unit sphere. MiniLM's vectors share a large common
    component, so their cosines crowd together; with it removed the neighbour vote and the topic-line
    similarities tell routes apart better (routing dev set, held-out source families: macro-F1 0.864 -> 0.874, fallback
    recall 0.80 -> 0.84)."""
    X = X - center
    return X / np.maximum(np.linalg.norm(X, axis=-1, keepdims=True), 1e-12)


def temper(p: np.ndarray, t: float) -> np.ndarray:
    z = np.log(np.maximum(p, 1e-12)) / t
    return _softmax(z)
