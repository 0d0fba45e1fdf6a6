"""Reference encoder: the model run by sentence-transformers itself (PyTorch)."""

from __future__ import annotations

from functools import cached_property
from typing import Sequence

import numpy as np

from classifier.encoders.base import Encoder


class SentenceTransformerEncoder(Encoder):
    backend = "sentence-transformers"

    @cached_property
    def model(self):
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(str(self.model_dir), device="cpu")
        m.max_seq_length = self.max_seq_length
        return m

    @property
    def dim(self) -> int:
        fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(fn())

    def _encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)
