"""Fast encoder: the same transformer exported to ONNX, weights quantised to int8, run by ONNX Runtime.

The export happens once per model (about 2 s) and is cached under $FORGETLESS_CACHE (default
~/.cache/forgetless). Pooling is the model's own: mean over tokens (all-MiniLM-L6-v2's setting).
"""

from __future__ import annotations

import inspect
import os
import tempfile
import threading
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from classifier.encoders.base import Encoder, weights_fingerprint
from classifier.errors import InputError

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def cache_root() -> Path:
    return Path(os.environ.get("FORGETLESS_CACHE", Path.home() / ".cache" / "forgetless"))


def export_onnx(model_dir: Path, out: Path, quantize: bool) -> Path:
    """Export `model_dir` (a Hugging Face encoder) to ONNX at `out`, int8 weights if `quantize`. Atomic."""
    import logging
    import warnings

    import torch
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    # BERT-style encoders take token_type_ids, others (MPNet, DistilBERT, ...) do not
    names = [n for n in _INPUTS if n in inspect.signature(base.forward).parameters]

    class _LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *tensors):
            return self.m(**dict(zip(names, tensors))).last_hidden_state

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        ids = torch.ones(2, 8, dtype=torch.long)
        example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        axes = {k: {0: "batch", 1: "seq"} for k in (*names, "last_hidden_state")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHidden(base), tuple(example[n] for n in names), str(fp32),
                input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                opset_version=17, dynamo=False,
            )
        final = fp32
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            final = Path(tmp) / "model-int8.onnx"
            logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
            quantize_dynamic(str(fp32), str(final), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(final, out)
    return out


class OnnxEncoder(Encoder):
    backend = "onnx"
    quantize = False

    def __init__(self, model_dir, max_seq_length: int = 256, threads: int | None = None):
        super().__init__(model_dir, max_seq_length)
        if not (self.model_dir / "tokenizer.json").is_file():
            raise InputError(f"{self.model_dir}: no tokenizer.json (a fast tokenizer is needed for ONNX)")
        self.threads = threads or min(2, os.cpu_count() or 1)
        self._singles = 0  # single texts being encoded right now (several threads may decide at once)
        self._singles_lock = threading.Lock()

    @cached_property
    def onnx_path(self) -> Path:
        name = "model-int8-pc.onnx" if self.quantize else "model.onnx"
        path = cache_root() / "encoders" / weights_fingerprint(self.model_dir)[:16] / name
        if not path.exists():
            export_onnx(self.model_dir, path, self.quantize)
        return path

    @cached_property
    def session(self):
        return self._new_session(self.threads)

    @cached_property
    def solo_session(self):
        """One-thread session for a single text encoded while another one is: two texts at once, one core each,
        beat taking turns on both cores (requests/s with every prompt new, gateway in front of an instant
        upstream, alternating runs: 119-149/s before, 154-201/s with it), while a text that runs alone keeps both
        cores (a ~200-token prompt takes 1.4x as long on one)."""
        return self._new_session(1)

    def _new_session(self, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting after a run: spinning ORT threads starve the numpy head and the event loop on 2 cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(self.onnx_path), so, providers=["CPUExecutionProvider"])

    @cached_property
    def _input_names(self) -> frozenset[str]:
        """The inputs the exported graph takes (no token_type_ids for MPNet-like encoders, or when unused)."""
        return frozenset(i.name for i in self.session.get_inputs())

    @cached_property
    def tokenizer(self):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tok.enable_truncation(self.max_seq_length)
        tok.enable_padding()  # pad to the longest text of each batch, not to a fixed length
        return tok

    @cached_property
    def dim(self) -> int:
        return int(self._encode_batch(["dimension probe"]).shape[1])

    def _encode_single(self, text: str) -> np.ndarray:
        with self._singles_lock:
            alone = self._singles == 0
            self._singles += 1
        try:
            return self._encode_batch([text], None if alone else self.solo_session)[0]
        finally:
            with self._singles_lock:
                self._singles -= 1

    def _encode_batch(self, texts: Sequence[str], session=None) -> np.ndarray:
        session = session or self.session
        enc = self.tokenizer.encode_batch(list(texts))
        feed = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        mask = feed["attention_mask"][..., None].astype(np.float32)
        hidden = session.run(None, {k: v for k, v in feed.items() if k in self._input_names})[0]
        return (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)


class OnnxInt8Encoder(OnnxEncoder):
    backend = "onnx-int8"
    quantize = True
