"""Router library: save/load round trip, encoder identity check, corrupted files, thresholds, encoders agree."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES, encoder_without_token_types, run_cli

from classifier import EmbeddingRouter, InputError
from classifier.encoders import build_encoder
from classifier.thresholds import apply_thresholds, tune_thresholds


def test_round_trip_gives_same_decisions(example_router):
    r = EmbeddingRouter.load(example_router)
    texts = ["Draft a non-compete clause", "Solve for x: 3x + 7 = 22.", "tell me about your day"]
    a = [d.as_dict() for d in r.decide_batch(texts)]
    b = [r.decide(t).as_dict() for t in texts]
    assert [x["route"] for x in a] == [x["route"] for x in b]
    # int8 dynamic quantisation scales activations per batch, so batched and single scores differ a little
    # (a known limit of the default encoder, see README); decisions with a clear margin agree
    np.testing.assert_allclose([x["probability"] for x in a], [x["probability"] for x in b], atol=0.1)


def test_loading_with_another_encoder_fails_clearly(example_router):
    st = build_encoder("sentence-transformers")
    with pytest.raises(InputError, match="trained with encoder onnx-int8"):
        EmbeddingRouter.load(example_router, encoder=st)


def test_loading_with_different_weights_fails(example_router, tmp_path):
    doc = json.loads((example_router / "router.json").read_text())
    copy = tmp_path / "r"
    shutil.copytree(example_router, copy)
    doc["encoder"]["weights_sha256"] = "0" * 64
    (copy / "router.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="weights_sha256"):
        EmbeddingRouter.load(copy)


@pytest.mark.parametrize("damage", ["router_json", "head_npz", "missing_head"])
def test_corrupted_router_files(example_router, tmp_path, damage):
    copy = tmp_path / "r"
    shutil.copytree(example_router, copy)
    if damage == "router_json":
        (copy / "router.json").write_text("{not json")
    elif damage == "head_npz":
        (copy / "head.npz").write_bytes(b"garbage")
    else:
        (copy / "head.npz").unlink()
    with pytest.raises(InputError):
        EmbeddingRouter.load(copy)


def test_threshold_rule_sends_unsure_requests_to_fallback():
    labels = ["code", "general", "legal"]
    proba = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1]])
    assert apply_thresholds(proba, labels, "general", {"code": 0.5, "legal": 0.5}) == ["code", "general", "general"]
    y = ["code", "general", "general"]
    th = tune_thresholds(proba, y, labels, "general")
    assert apply_thresholds(proba, labels, "general", th) == y


def test_onnx_encoders_match_sentence_transformers():
    texts = ["How do I reverse a linked list?", "The patient presents with chest pain " * 20, "hi"]
    ref = build_encoder("sentence-transformers").encode(texts)
    fp32 = build_encoder("onnx").encode(texts)
    int8 = build_encoder("onnx-int8").encode(texts)
    assert np.all((fp32 * ref).sum(1) > 0.999)
    assert np.all((int8 * ref).sum(1) > 0.95)


@pytest.mark.parametrize("backend", ["onnx-int8", "sentence-transformers"])
def test_a_lone_surrogate_is_encoded_as_a_replacement_character_not_an_error(backend):
    # Python strings can hold lone surrogates (a JSON "\\ud800" escape, argv bytes the locale cannot decode), and
    # tokenizers refuse them with a TypeError; the encoder reads them as U+FFFD, one text or many
    enc = build_encoder(backend)
    bad, clean = "a contract \udce9 clause", "a contract \ufffd clause"
    assert np.allclose(enc.encode_one(bad), enc.encode_one(clean), atol=1e-6)
    both = enc.encode([bad, "hello"])
    assert np.allclose(both, enc.encode([clean, "hello"]), atol=1e-6) and np.isfinite(both).all()


def test_encoders_without_token_type_ids_work_on_every_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    model = encoder_without_token_types(tmp_path / "distil")
    texts = ["How do I reverse a linked list?", "The patient presents with chest pain " * 20, "hi"]
    ref = build_encoder("sentence-transformers", model).encode(texts)
    fp32 = build_encoder("onnx", model).encode(texts)
    int8 = build_encoder("onnx-int8", model)
    assert fp32.shape == ref.shape == (3, 32)
    assert np.all((fp32 * ref).sum(1) > 0.999)
    assert np.all((int8.encode(texts) * ref).sum(1) > 0.9)
    assert {i.name for i in int8.session.get_inputs()} == {"input_ids", "attention_mask"}
    # and the default (BERT) encoder's graph still takes token types
    assert "token_type_ids" in {i.name for i in build_encoder("onnx-int8").session.get_inputs()}


def test_route_train_with_an_encoder_without_token_type_ids(tmp_path):
    model = encoder_without_token_types(tmp_path / "distil")
    env = {"FORGETLESS_CACHE": str(tmp_path / "cache")}
    r = run_cli("route", "train", "--data", EXAMPLES, "--encoder-model", model, "--out", tmp_path / "r", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r" / "router.json").read_text())["encoder"]["dim"] == 32
    r = run_cli("route", "predict", "--router", tmp_path / "r", "--encoder-model", model, "Is this contract valid?", env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_two_texts_at_once_take_a_core_each_and_get_the_same_vectors():
    """The ONNX encoder: a single text encoded alone runs on the two-thread session; one that arrives while another
    is being encoded runs on the one-thread session. Both give the same vectors as one after the other."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    enc = build_encoder("onnx-int8")
    enc.__dict__["one_thread_tokens"] = 0  # short texts alone on two threads too (see the next test)
    texts = ["Is a verbal agreement binding?", "What are the symptoms of anemia?"]
    alone = [enc.encode_one(t) for t in texts]
    meet, used = threading.Barrier(2, timeout=60), []

    class Meeting:  # each run waits until both texts are inside a session
        def __init__(self, session, name):
            self.session, self.name = session, name

        def run(self, *args):
            used.append(self.name)
            meet.wait()
            return self.session.run(*args)

    enc.__dict__["session"] = Meeting(enc.session, "two threads")
    enc.__dict__["solo_session"] = Meeting(enc.solo_session, "one thread")
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(enc.encode_one, texts))
    assert sorted(used) == ["one thread", "two threads"]
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
    used.clear()
    enc.__dict__["session"] = enc.session.session
    enc.encode_one(texts[0])
    assert used == []  # alone again: the two-thread session (the real one now), not the solo one


def test_the_gateway_answers_a_repeated_text_from_the_cache_on_its_event_loop(example_router):
    """A decision already made is not handed to a router thread again (under load that hand-off cost more than
    the lookup); a new text is."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from gateway.auth import require_admin_key, require_client_key
    from gateway.observability import Metrics
    from gateway.state import GatewayState

    handed = []

    class Pool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            handed.append(args)
            return super().submit(fn, *args, **kwargs)

    router = EmbeddingRouter.load(example_router)
    state = SimpleNamespace(router_pool=Pool(1), metrics=Metrics())
    first = asyncio.run(GatewayState.decide(state, router, "Draft a non-compete clause"))
    again = asyncio.run(GatewayState.decide(state, router, "Draft a non-compete clause"))
    other = asyncio.run(GatewayState.decide(state, router, "Solve for x: 3x + 7 = 22."))
    assert handed == [("Draft a non-compete clause",), ("Solve for x: 3x + 7 = 22.",)]
    assert again is first and other.route != first.route
    # and /metrics says so: forgetless_router_decisions_total by source
    count = state.metrics.registry.get_sample_value
    assert count("forgetless_router_decisions_total", {"source": "encoder"}) == 2
    assert count("forgetless_router_decisions_total", {"source": "cache"}) == 1
    # the key checks are coroutines too: FastAPI would run a plain function on a worker thread per request
    assert asyncio.iscoroutinefunction(require_client_key) and asyncio.iscoroutinefunction(require_admin_key)


class _Spy:
    """Stands in for an ONNX session and records which one ran."""

    def __init__(self, session, name, used):
        self.session, self.name, self.used = session, name, used

    def run(self, *args):
        self.used.append(self.name)
        return self.session.run(*args)


def test_a_text_alone_runs_on_one_thread_up_to_the_cutoff_with_the_same_vector():
    enc = build_encoder("onnx-int8")
    short, long = "Is a verbal agreement binding?", " ".join(["The tenant shall pay the rent on the first day."] * 8)
    assert len(enc.tokenizer.encode(short).ids) <= 32 < len(enc.tokenizer.encode(long).ids)
    enc.__dict__["one_thread_tokens"] = 0
    enc.encode_one(short)  # the sessions' inputs are read from the real session
    used = []
    enc.__dict__["session"] = _Spy(enc.session, "two threads", used)
    enc.__dict__["solo_session"] = _Spy(enc.solo_session, "one thread", used)
    vectors = {}
    for cutoff in (0, 32, 10_000):
        enc.__dict__["one_thread_tokens"] = cutoff
        vectors[cutoff] = [enc.encode_one(short), enc.encode_one(long)]
    assert used == ["two threads", "two threads", "one thread", "two threads", "one thread", "one thread"]
    for cutoff in (32, 10_000):  # the thread count never changes a vector, so never a route
        for a, b in zip(vectors[0], vectors[cutoff]):
            np.testing.assert_array_equal(a, b)


def test_one_thread_cutoff_is_the_longest_length_where_one_thread_keeps_up_within_a_tolerance():
    from classifier.encoders.onnx import one_thread_cutoff

    def timer(costs):  # costs[tokens] = (one thread, two threads); every third pair disturbed by a busy machine
        calls = []

        def seconds(threads, tokens):
            calls.append((threads, tokens))
            one, two = costs[tokens]
            noise = 5.0 if len(calls) % 6 in (1, 2) and len(calls) % 18 < 6 else 1.0
            return (one if threads == 1 else two) * noise
        return seconds, calls

    seconds, calls = timer({16: (1.0, 1.3), 32: (1.8, 2.4), 64: (3.3, 4.0), 128: (8.0, 7.0)})
    assert one_thread_cutoff(seconds) == 64
    assert {t for t, _ in calls} == {1, 2} and max(n for _, n in calls) == 128
    assert calls[:2] == [(1, 16), (2, 16)] and calls[2:4] == [(2, 16), (1, 16)]  # order alternates pair by pair
    seconds, calls = timer({16: (1.2, 1.0), 32: (1.0, 2.0), 64: (1.0, 2.0), 128: (1.0, 2.0)})
    assert one_thread_cutoff(seconds) == 0 and max(n for _, n in calls) == 16  # slower at the shortest: stop
    # a little slower on one thread (within the 10 % tolerance) still takes one thread
    seconds, _ = timer({16: (1.05, 1.0), 32: (1.09, 1.0), 64: (1.12, 1.0), 128: (1.3, 1.0)})
    assert one_thread_cutoff(seconds) == 32
    assert one_thread_cutoff(timer({16: (1.05, 1.0), 32: (1.09, 1.0), 64: (1.12, 1.0), 128: (1.3, 1.0)})[0],
                             tolerance=1.0) == 0
    seconds, _ = timer({n: (1.0, 2.0) for n in (16, 32, 64, 128)})
    assert one_thread_cutoff(seconds) == 128


def test_one_thread_cutoff_from_the_environment(monkeypatch):
    from classifier.encoders.onnx import ONE_THREAD_ENV

    monkeypatch.setenv(ONE_THREAD_ENV, "48")
    assert build_encoder("onnx-int8").one_thread_tokens == 48
    monkeypatch.setenv(ONE_THREAD_ENV, "many")
    with pytest.raises(InputError, match=f"{ONE_THREAD_ENV}='many'"):
        build_encoder("onnx-int8").encode_one("hello")
    monkeypatch.delenv(ONE_THREAD_ENV)
    enc = build_encoder("onnx-int8")
    enc.warm_up()  # measures it: one of the lengths tried, or 0
    assert enc.one_thread_tokens in (0, 16, 32, 64, 128)
    assert {"session", "solo_session"} <= set(enc.__dict__)


def test_serve_keeps_one_blas_thread_for_the_process():
    """`serve` sets the one-thread BLAS limit on the main thread, for good (checked in a fresh process)."""
    code = ("import numpy, scipy.linalg\n"
            "from threadpoolctl import threadpool_info\n"
            "from deploy.serve import keep_one_blas_thread\n"
            "keep_one_blas_thread()\n"
            "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))\n")
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[1]"


def test_length_batches_keep_long_prompts_out_of_short_batches():
    from classifier.encoders.base import length_batches

    texts = ["short question?"] * 5 + ["a long contract clause " * 40] + ["another short one"] * 3
    batches = length_batches(texts, batch_size=64)
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))  # every text exactly once
    long_batch = next(b for b in batches if 5 in b)
    assert long_batch == [5]  # padded alone, not with the eight short ones
    assert all(len(b) <= 3 for b in length_batches(["x"] * 8, batch_size=3))


def test_source_balanced_weights():
    from classifier.head import balanced_weights

    y = ["legal"] * 6 + ["code"] * 2
    groups = ["mmlu"] * 5 + ["cuad"] + ["mbpp"] * 2
    w = balanced_weights(y, groups)
    assert w is not None and abs(w.mean() - 1.0) < 1e-9
    assert abs(w[:6].sum() - w[6:].sum()) < 1e-9  # every route the same total weight
    assert abs(w[:5].sum() - w[5]) < 1e-9  # within legal, the one cuad row weighs as much as five mmlu rows
    assert balanced_weights(y, None) is None


def test_router_records_its_weighting(example_router):
    doc = json.loads((example_router / "router.json").read_text())
    assert doc["training"]["weighting"] == "per source family within each route"  # the example set names sources


def test_topic_lines_score_a_route_by_its_closest_line():
    from classifier.head import Head

    # two routes; "a" has two topic lines pointing different ways, "b" one line
    protos = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    head = Head(["a", "b"], weight=np.zeros((2, 2), np.float32), bias=np.zeros(2, np.float32),
                memory=np.eye(2, dtype=np.float16), memory_labels=np.array([0, 1], np.int32), k=2,
                prototypes=protos, prototype_labels=np.array([0, 0, 1], np.int32))
    X = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    p = head.raw_proba(X)
    # [0, 1] matches a's second line exactly (1.0 > 0.8 for b), [1, 0] a's first line: "a" wins both
    assert (p.argmax(axis=1) == [0, 0]).all()
    # an average of a's lines would lose the first prompt to b
    mean_a = protos[:2].mean(axis=0)
    assert X[0] @ mean_a < X[0] @ protos[2]


def test_routers_saved_with_one_line_per_route_still_load(example_router, tmp_path):
    """Before topic lists, head.npz held one prototype row per route (zeros where none) and no prototype_labels."""
    copy = tmp_path / "r"
    shutil.copytree(example_router, copy)
    r = EmbeddingRouter.load(copy)
    with np.load(copy / "head.npz") as z:
        arrays = {k: z[k] for k in z.files}
    enc = r.encoder
    old = np.zeros((len(r.labels), enc.dim), dtype=np.float32)
    old[r.labels.index("legal")] = enc.encode(["Contracts, courts and statutes."])[0]
    old[r.labels.index("code")] = enc.encode(["Programming and debugging."])[0]
    arrays["prototypes"] = old
    del arrays["prototype_labels"]
    np.savez(copy / "head.npz", **arrays)
    loaded = EmbeddingRouter.load(copy)
    assert loaded.head.prototypes.shape == (2, enc.dim)
    assert sorted(r.labels[i] for i in loaded.head.prototype_labels) == ["code", "legal"]
    assert loaded.decide("Write a Python function that reverses a list").route in r.labels


def test_head_centres_embeddings_on_the_training_mean_and_keeps_the_mean(example_router, tmp_path):
    from classifier.head import centred

    r = EmbeddingRouter.load(example_router)
    center = r.head.center
    assert center is not None and center.shape == (r.encoder.dim,) and np.linalg.norm(center) > 0.1
    # the stored memory is the centred training set: unit rows whose mean is (close to) zero
    mem = r.head.memory.astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(mem, axis=1), 1.0, atol=1e-2)
    raw = r.encoder.encode(["Draft a non-compete clause", "Solve for x", "tell me about your day", "fever and cough"])
    assert np.linalg.norm(mem.mean(axis=0)) < 0.5 * np.linalg.norm(raw.mean(axis=0))
    # the same head without its centre scores differently: the centre is used at decision time
    X = r.encoder.encode(["Draft a non-compete clause", "tell me about your day"])
    plain = dataclasses.replace(r.head, center=None)
    assert not np.allclose(r.head.raw_proba(X), plain.raw_proba(centred(X, np.zeros_like(center))))
    np.testing.assert_allclose(r.head.raw_proba(X), plain.raw_proba(centred(X, center)), atol=1e-5)
    # a router saved before centring (no `center` array) still loads and decides on raw embeddings
    copy = tmp_path / "old"
    shutil.copytree(example_router, copy)
    with np.load(copy / "head.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "center"}
    np.savez(copy / "head.npz", **arrays)
    old = EmbeddingRouter.load(copy)
    assert old.head.center is None and old.decide("tell me about your day").route in r.labels
    # a centre of the wrong size is refused with a one-line error
    arrays["center"] = np.zeros(3, np.float32)
    np.savez(copy / "head.npz", **arrays)
    with pytest.raises(InputError, match="head arrays do not match"):
        EmbeddingRouter.load(copy)


def test_default_training_uses_builtin_topics_and_user_lines_replace_them(tmp_path):
    from conftest import EXAMPLES

    from classifier.data import load_examples
    from classifier.topics import BUILTIN_TOPICS

    ex = load_examples(EXAMPLES)
    enc = build_encoder("onnx-int8")
    X = enc.encode(ex.texts)
    said = []
    r = EmbeddingRouter.fit_embeddings(X, ex, "general", enc, max_folds=3, log=said.append,
                                       descriptions={"legal": ["Contracts.", "Courts."]})
    topics = r.meta["training"]["descriptions"]
    assert topics["legal"] == ["Contracts.", "Courts."] and topics["math"] == BUILTIN_TOPICS["math"]
    n_lines = sum(len(v) for v in topics.values())
    assert r.head.prototypes.shape == (n_lines, enc.dim) and len(r.head.prototype_labels) == n_lines
    assert any("yours: legal" in s and "built-in: code" in s for s in said)
    bare = EmbeddingRouter.fit_embeddings(X, ex, "general", enc, max_folds=3, builtin_topics=False)
    assert bare.head.prototypes is None and bare.meta["training"]["descriptions"] == {}
    with pytest.raises(InputError, match="missing: code, finance, math, medical"):
        EmbeddingRouter.fit_embeddings(X, ex, "general", enc, max_folds=3, builtin_topics=False,
                                       descriptions={"legal": "Contracts.", "general": "Chat."})


def test_topic_lines_come_from_the_user_then_builtin_then_descriptions():
    from classifier.topics import BUILTIN_TOPICS, resolve_topics

    labels = ["contracts", "general", "legal"]
    topics, said = resolve_topics(labels, {"legal": ["Mine."]}, required=False,
                                  fallback={"contracts": ["Contract review."], "legal": ["Not used."]})
    assert topics == {"contracts": ["Contract review."], "general": BUILTIN_TOPICS["general"], "legal": ["Mine."]}
    assert "yours: legal" in said and "built-in: general" in said and "description: contracts" in said
    none, said = resolve_topics(labels, {}, required=False)
    assert none is None and "(contracts)" in said


def test_single_row_head_gives_the_batch_heads_numbers(example_router):
    """`decide` scores one embedding with `Head.proba_one`, `decide_batch` with `Head.proba`: same numbers, for
    heads with and without centre, topic lines, a route without lines, and more neighbours than memory rows."""
    r = EmbeddingRouter.load(example_router)
    X = r.encoder.encode(["Draft a non-compete clause", "Solve for x: 3x + 7 = 22.", "tell me about your day",
                          "fever and cough for three days", "def f(x): return x[::-1]  # why slow?"])
    legal = r.labels.index("legal")
    keep = r.head.prototype_labels != legal
    heads = {
        "saved": r.head,
        "no centre": dataclasses.replace(r.head, center=None),
        "no topic lines": dataclasses.replace(r.head, prototypes=None, prototype_labels=None),
        "a route without lines": dataclasses.replace(r.head, prototypes=r.head.prototypes[keep],
                                                     prototype_labels=r.head.prototype_labels[keep]),
        "k above memory": dataclasses.replace(r.head, memory=r.head.memory[:7], memory_labels=r.head.memory_labels[:7],
                                              k=50),
    }
    for name, head in heads.items():
        batch = head.proba(X)
        single = np.array([head.proba_one(x) for x in X])
        np.testing.assert_allclose(single, batch, atol=2e-5, err_msg=name)
        assert (single.argmax(axis=1) == batch.argmax(axis=1)).all(), name
    # a head whose arrays are swapped after its first decision scores with the new ones, not a stale copy
    head = dataclasses.replace(r.head)
    head.proba_one(X[0])
    head.memory, head.memory_labels = r.head.memory[::2], r.head.memory_labels[::2]
    head.prototypes, head.prototype_labels = r.head.prototypes[keep], r.head.prototype_labels[keep]
    np.testing.assert_allclose(head.proba_one(X[0]), head.proba(X[:1])[0], atol=2e-5)
    assert not np.allclose(head.proba_one(X[0]), r.head.proba_one(X[0]), atol=1e-4)
    # the variants differ from each other, so the comparison above covers different code paths
    assert not np.allclose(heads["saved"].proba(X), heads["no topic lines"].proba(X), atol=1e-3)
    assert not np.allclose(heads["saved"].proba(X), heads["a route without lines"].proba(X), atol=1e-3)
