"""The Encoder interface: texts in, L2-normalised float32 embeddings out."""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Sequence

import numpy as np

from classifier.errors import InputError

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_for_tokenizer(text: str) -> str:
    """`text` with lone UTF-16 surrogates (from a JSON \\ud800 escape, or undecodable bytes read with Python's
    surrogateescape) replaced by U+FFFD: tokenizers refuse them outright."""
    return _SURROGATE.sub("\ufffd", text)


class Encoder(ABC):
    """Turns texts into unit-length vectors. Implementations differ in runtime, never in contract."""

    #: registry name, e.g. "onnx-int8"; stored in a saved router and checked on load
    backend: str = ""

    def __init__(self, model_dir: str | Path, max_seq_length: int = 256):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise InputError(f"{self.model_dir}: not a sentence-transformers model directory (no config.json)")
        self.max_seq_length = max_seq_length

    @property
    @abstractmethod
    def dim(self) -> int: ...

    @abstractmethod
    def _encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Unnormalised embeddings for one batch."""

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Embed `texts` in batches (shortest first, so padding stays small), optionally with a progress bar."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if any(not t.isascii() and _SURROGATE.search(t) for t in texts):
            texts = [text_for_tokenizer(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = length_batches(texts, batch_size)
        if progress:
            from classifier.progress import LoggedProgress

            with LoggedProgress(transient=False) as bar:
                task = bar.add_task(f"encoding {len(texts)} texts", total=len(texts))
                for idx in batches:
                    out[idx] = self._encode_batch([texts[i] for i in idx])
                    bar.advance(task, len(idx))
        else:
            for idx in batches:
                out[idx] = self._encode_batch([texts[i] for i in idx])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def encode_one(self, text: str) -> np.ndarray:
        try:
            vec = self._encode_single(text)
        except TypeError:  # the tokenizer's answer to a lone surrogate; checked here, off the common path
            if not _SURROGATE.search(text):
                raise
            vec = self._encode_single(text_for_tokenizer(text))
        return vec / max(float(np.linalg.norm(vec)), 1e-12)

    def warm_up(self) -> None:
        """Load everything a first decision would wait for (a server calls this before it takes requests)."""
        self.encode_one("warm-up")

    def _encode_single(self, text: str) -> np.ndarray:
        """Unnormalised embedding of one text (a backend may run single texts differently from batches)."""
        return self._encode_batch([text])[0]

    def identity(self) -> dict:
        """What a saved router must be used with: backend, model name and weights fingerprint, size."""
        return {
            "backend": self.backend,
            "model": self.model_dir.name if self.model_dir.name != "model" else self.model_dir.parent.name,
            "weights_sha256": weights_fingerprint(self.model_dir),
            "dim": self.dim,
            "max_seq_length": self.max_seq_length,
        }


def length_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Indices of `texts` in batches of similar length: shortest first, and a batch closes early when the next
    text is more than twice as long as its first one (every row is padded to the batch's longest, so one long
    prompt among short ones would multiply the work of the whole batch)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches: list[list[int]] = []
    for i in order:
        if not batches or len(batches[-1]) >= batch_size or len(texts[i]) > 2 * len(texts[batches[-1][0]]) + 32:
            batches.append([])
        batches[-1].append(i)
    return batches


def weights_fingerprint(model_dir: Path) -> str:
    """sha256 of the weight file(s), so two copies of one model match and two different models don't."""
    h = hashlib.sha256()
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise InputError(f"{model_dir}: no model weights (*.safetensors or *.bin)")
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
