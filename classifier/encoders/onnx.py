"""Fast encoder: the same transformer exported to ONNX, weights quantised to int8, run by ONNX Runtime.

The export happens once per model (about 2 s) and is cached under $FORGETLESS_CACHE (default
~/.cache/forgetless). Pooling is the model's own: mean over tokens (all-MiniLM-L6-v2's setting).
"""

from __future__ import annotations

import inspect
import os
import statistics
import tempfile
import threading
import time
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from classifier.encoders.base import Encoder, weights_fingerprint
from classifier.errors import InputError

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: environment variable that fixes the one-thread cut-off (tokens) instead of measuring it; 0 = two threads always
ONE_THREAD_ENV = "FORGETLESS_ONE_THREAD_TOKENS"
_CALIBRATION_TEXT = "Is this clause about late payment enforceable, and what does the statute say about interest?"


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


#: how much slower one thread may be than two and still take a text: one thread leaves the other core to the
#: event loop and to other requests, and does not wait on a second core that something else keeps busy
ONE_THREAD_TOLERANCE = 1.10


def one_thread_cutoff(seconds: Callable[[int, int], float], lengths: Sequence[int] = (16, 32, 64, 128),
                      pairs: int = 9, tolerance: float = ONE_THREAD_TOLERANCE) -> int:
    """The longest of `lengths` (tokens) up to which a single text runs on one thread at most `tolerance` times
    as long as on two, 0 when one thread is slower than that already at the shortest. `seconds(threads, tokens)`
    times one run. The two are timed in pairs, in alternating order, and compared by the median ratio, so a busy
    stretch of the machine slows both sides of a pair alike. Where the crossover lies depends on the CPU: on a
    2-core Intel Xeon VM one thread was 20-27 % faster up to 64 tokens and even at 128 (waking the second thread
    costs more than it saves), on a 2-core AMD EPYC 42-57 % slower at 200 tokens, and at 16-32 tokens anywhere
    from 30 % faster to 5 % slower from one process to the next. With "at least as fast" as the rule, that spread
    made the cut-off 0 in some processes and 32 or 64 in others (five starts on one day: 0, 0, 32, 64, 64), and a
    short prompt's decision time moved with it; the tolerance keeps short prompts on one thread there."""
    cutoff = 0
    for n in lengths:
        ratios = []
        for i in range(pairs):
            order = (1, 2) if i % 2 == 0 else (2, 1)
            took = {threads: seconds(threads, n) for threads in order}
            ratios.append(took[1] / took[2])
        if statistics.median(ratios) > tolerance:
            break
        cutoff = n
    return cutoff


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
        """One-thread session, for a single text encoded while another one is, and for a short one. Two texts at
        once, one core each, beat taking turns on both cores (requests/s with every prompt new, gateway in front
        of an instant upstream, alternating runs: 119-149/s before, 154-201/s with it). A text alone runs here
        when it is at most `one_thread_tokens` long; a longer one keeps both cores (a ~200-token prompt takes
        1.1-1.5x as long on one). Both sessions give bit-identical vectors, so the choice never changes a route."""
        return self._new_session(1)

    @cached_property
    def one_thread_tokens(self) -> int:
        """Up to how many tokens a text encoded alone runs on one thread: $FORGETLESS_ONE_THREAD_TOKENS when set,
        else measured on this machine once per encoder (about 0.3 s; see `one_thread_cutoff`)."""
        raw = os.environ.get(ONE_THREAD_ENV)
        if raw is not None:
            try:
                value = int(raw)
                if value < 0:
                    raise ValueError
            except ValueError:
                raise InputError(f"{ONE_THREAD_ENV}={raw!r}: not a whole number of tokens >= 0") from None
            return value
        if self.threads == 1:
            return 0  # both sessions have one thread
        ids = self.tokenizer.encode(_CALIBRATION_TEXT, add_special_tokens=False).ids
        edges = self.tokenizer.encode("").ids  # the model's start and end tokens, if it has them
        first, last = edges[:1], edges[1:]
        sessions = {1: self.solo_session, 2: self.session}

        def seconds(threads: int, tokens: int) -> float:
            body = (ids * (tokens // len(ids) + 1))[: max(tokens - 2, 1)]
            feed = self._row_feed(np.array([first + body + last], dtype=np.int64))
            start = time.perf_counter()
            sessions[threads].run(None, feed)
            return time.perf_counter() - start

        for threads in sessions:  # first runs allocate
            seconds(threads, 128)
        return one_thread_cutoff(seconds)

    def warm_up(self) -> None:
        """Create both sessions, run each once and settle the one-thread cut-off, before a request waits for it."""
        for session in (self.session, self.solo_session):
            self._pooled(self._feed(["warm-up"]), session)
        _ = self.one_thread_tokens

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
        ids = np.array(self.tokenizer.encode(text).ids, dtype=np.int64)[None, :]  # one text: no padding, no mask
        short = ids.shape[1] <= self.one_thread_tokens
        with self._singles_lock:
            alone = self._singles == 0
            self._singles += 1
        try:
            session = self.session if alone and not short else self.solo_session
            return session.run(None, self._row_feed(ids))[0][0].mean(axis=0)
        finally:
            with self._singles_lock:
                self._singles -= 1

    def _row_feed(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's inputs for one unpadded row of token ids (1, T): every token attended, one segment."""
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return {k: v for k, v in feed.items() if k in self._input_names}

    def _encode_batch(self, texts: Sequence[str], session=None) -> np.ndarray:
        return self._pooled(self._feed(texts), session or self.session)

    def _feed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }

    def _pooled(self, feed: dict[str, np.ndarray], session) -> np.ndarray:
        mask = feed["attention_mask"][..., None].astype(np.float32)
        hidden = session.run(None, {k: v for k, v in feed.items() if k in self._input_names})[0]
        return (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)


class OnnxInt8Encoder(OnnxEncoder):
    backend = "onnx-int8"
    quantize = True
