"""The router's CLI contract: train / eval / predict / bench, and one-line errors on bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, DEMO_CONFIG, DESCRIPTIONS, EXAMPLES, REPO, run_cli


def test_train_prints_validation_and_saves_inspectable_router(example_router):
    doc = json.loads((example_router / "router.json").read_text())
    assert doc["fallback"] == "general"
    assert set(doc["labels"]) == {"legal", "medical", "code", "math", "finance", "general"}
    assert set(doc["thresholds"]) == set(doc["labels"]) - {"general"}
    assert doc["encoder"]["backend"] == "onnx-int8" and doc["encoder"]["dim"] == 384
    assert len(doc["training"]["data_sha256"]) == 64
    topics = doc["training"]["descriptions"]
    from classifier.topics import BUILTIN_TOPICS

    assert topics == {lab: BUILTIN_TOPICS[lab] for lab in doc["labels"]}  # the default: built-in topic lines
    assert doc["validation"]["scheme"].startswith("held-out source families")
    assert 0.5 < doc["validation"]["macro_f1"] <= 1.0
    import numpy as np

    with np.load(example_router / "head.npz", allow_pickle=False) as z:  # no pickles anywhere
        assert z["weight"].shape == (6, 384)
        n_lines = sum(len(v) for v in topics.values())
        assert z["prototypes"].shape == (n_lines, 384) and z["prototype_labels"].shape == (n_lines,)


def test_eval_json_is_one_object_with_contract_keys(example_router):
    r = run_cli("route", "eval", "--router", example_router, "--data", EXAMPLES, "--json")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    m = json.loads(lines[0])
    for key in ("accuracy", "macro_f1", "per_label", "confusion", "fallback_rate"):
        assert key in m
    assert m["accuracy"] > 0.9  # in-sample on its own training set
    assert sum(map(sum, m["confusion"]["matrix"])) == len(EXAMPLES.read_text().splitlines())
    # the example set names its sources: accuracy per source, adding up to the overall figure
    per = m["per_source"]
    assert set(per) == {"forgetless/chat", "forgetless/question", "forgetless/snippet", "forgetless/task"}
    assert abs(sum(v["accuracy"] * v["n"] for v in per.values()) / m["n"] - m["accuracy"]) < 1e-9


def test_eval_and_predict_decide_each_text_as_the_gateway_does(example_router, tmp_path):
    """Each text alone, the way the gateway decides: the same routes and probabilities as `decide` one by one
    (with the int8 encoder a batch's vectors differ slightly, so a batched eval could disagree)."""
    from classifier.routers.embedding import EmbeddingRouter

    rows = [json.loads(ln) for ln in EXAMPLES.read_text().splitlines()][:40]
    data = tmp_path / "some.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows))
    router = EmbeddingRouter.load(example_router)
    alone = [router.decide(r["text"]) for r in rows]
    r = run_cli("route", "eval", "--router", example_router, "--data", data, "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["accuracy"] == sum(d.route == row["label"] for d, row in zip(alone, rows)) / len(rows)
    assert "per_source" not in m  # these lines name no source
    texts = [row["text"] for row in rows[:6]]
    r = run_cli("route", "predict", "--router", example_router, "--json", *texts)
    assert r.returncode == 0, r.stderr
    assert [json.loads(ln) for ln in r.stdout.splitlines()] == [{"text": t, **d.as_dict()} for t, d in zip(texts, alone)]


def test_predict_routes_obvious_prompts(example_router):
    r = run_cli("route", "predict", "--router", example_router, "--json",
                "My landlord refuses to return my deposit, can I take him to court?",
                "Write a Python function that merges two dictionaries.",
                "What is a good name for a cat?")
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["route"] for o in out] == ["legal", "code", "general"]
    assert all(len(o["top"]) == 3 and 0 <= o["probability"] <= 1 for o in out)


def test_predict_names_a_text_that_is_not_utf8_and_reads_escaped_emoji(example_router, tmp_path):
    # argv bytes that are not UTF-8 reach Python as lone surrogates: one line naming the text, exit 2
    raw = [*(a.encode() for a in CLI), b"route", b"predict", b"--router", str(example_router).encode(),
           b"fine text", b"caf\xe9 contract"]
    r = subprocess.run(raw, capture_output=True, cwd=REPO)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and err == "error: TEXT 2: not valid UTF-8 (character 3)", err
    # a surrogate pair written as two escapes is one character (an emoji), valid text
    f = _write(tmp_path, "emoji.jsonl", b'{"text": "contract \\ud83d\\ude00 breach", "label": "legal"}\n'
                                        b'{"text": "hello there", "label": "general"}\n')
    r = run_cli("route", "eval", "--router", example_router, "--data", f, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["per_label"]["legal"]["support"] == 1, r.stderr


def test_bench_json_keys(example_router):
    r = run_cli("route", "bench", "--router", example_router, "--json", "--n", "30")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    for key in ("p50_ms_short", "p99_ms_short", "p50_ms_long", "p99_ms_long", "throughput_per_s", "baseline_p50_ms_short"):
        assert m[key] > 0
    assert m["p50_ms_long"] > m["p50_ms_short"] * 0.8
    # every prompt timed once by each side, in alternating blocks
    assert m["samples_short"] == 30 and m["interleave_block"] == 10


def test_every_command_has_help():
    for cmd in ([], ["route"], ["route", "train"], ["route", "eval"], ["route", "predict"], ["route", "bench"],
                ["adapters", "train"], ["base", "build"], ["serve"], ["demo"]):
        r = run_cli(*cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, (cmd, r.stderr)


def _write(tmp_path, name: str, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


GOOD = b'{"text": "a contract question", "label": "legal"}\n{"text": "hello", "label": "general"}\n'


@pytest.mark.parametrize("content, expect", [
    (b"", "file is empty"),
    (b'{"text": "x", "label": "legal"}\n{"label": "general"}\n', ":2: missing field 'text'"),
    (b'{"text": 3, "label": "legal"}\n', ":1: field 'text' must be a string"),
    (b'{"text": "   ", "label": "legal"}\n', ":1: field 'text' is blank"),
    (b'{"text": "a", "label": "general"}\n{"text": "b", "label": "general"}\n', "at least two labels"),
    (b'{"text": "a", "label": "legal"}\n{"text": "b", "label": "code"}\n', "fallback route 'general' has no examples"),
    (GOOD + b'{"text": "x", "label": \n', ":3: invalid JSON"),
    (GOOD + b'{"text": "caf\xe9", "label": "legal"}\n', ":3: not valid UTF-8"),
    (GOOD + b'{"text": "a \\ud800 contract", "label": "legal"}\n', ":3: field 'text' is not valid Unicode"),
    (GOOD + b'{"text": "x", "label": "legal", "source": "s\\udfff"}\n', ":3: field 'source' is not valid Unicode"),
    (b'["not", "an", "object"]\n', ":1: expected a JSON object"),
    pytest.param(GOOD + b"[" * 100_000 + b"]" * 100_000 + b"\n", ":3: JSON nested too deeply", id="nested-100k-deep"),
])
def test_train_bad_input_is_one_line_exit_2(tmp_path, content, expect):
    f = _write(tmp_path, "bad.jsonl", content)
    r = run_cli("route", "train", "--data", f, "--out", tmp_path / "r")
    assert r.returncode == 2
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err
    assert str(f) in err and expect in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command, where", [
    (["route", "train", "--data", EXAMPLES], "file"),
    (["route", "train", "--data", EXAMPLES], "under-file"),
    (["route", "train", "--data", EXAMPLES], "unwritable"),
    (["adapters", "train", "--data", EXAMPLES], "unwritable"),
    (["base", "build"], "file"),
    (["audit", "--config", DEMO_CONFIG, "--eval", "."], "under-file"),
    (["bench", "routing", "--data", EXAMPLES], "unwritable"),
    (["bench", "forgetting", "--quick"], "file"),
    (["bench", "overhead"], "under-file"),
    (["bench", "reliability", "--config", DEMO_CONFIG], "unwritable"),
])
def test_an_output_directory_that_cannot_be_written_is_refused_before_any_work(tmp_path, command, where):
    """A long job (encoding, training, scoring, a benchmark) checks its --out first: one line naming the option
    and the path, exit 2, and nothing written, instead of a traceback after minutes of work."""
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under-file": tmp_path / "afile" / "sub",
           "unwritable": Path("/proc/forgetless-out")}[where]  # nothing can be made under /proc, even by root
    r = run_cli(*command, "--out", out, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2 and "\n" not in err and "Traceback" not in err, r.stderr[-2000:]
    assert err.startswith(f"error: --out {out}:"), err
    assert {"file": "exists and is not a directory", "under-file": "is a file, not a directory",
            "unwritable": "cannot write in /proc"}[where] in err
    assert (tmp_path / "afile").read_text() == "x" and sorted(x.name for x in tmp_path.iterdir()) == ["afile"]


def test_a_file_the_system_refuses_is_one_line_not_a_traceback(capsys):
    from classifier.errors import exit_on_input_error

    @exit_on_input_error
    def writes(path):
        open(path, "w")

    with pytest.raises(SystemExit) as exc:
        writes("/proc/forgetless-none/x.json")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: /proc/forgetless-none/x.json: No such file or directory\n"

    @exit_on_input_error
    def broken():
        raise OSError("no file involved")

    with pytest.raises(OSError):  # not about a file the user named: a bug, shown as one
        broken()


def test_eval_unknown_label_and_missing_router(tmp_path, example_router):
    f = _write(tmp_path, "e.jsonl", b'{"text": "x", "label": "astrology"}\n')
    r = run_cli("route", "eval", "--router", example_router, "--data", f)
    assert r.returncode == 2 and "astrology" in r.stderr and str(f) in r.stderr and "Traceback" not in r.stderr
    r = run_cli("route", "eval", "--router", tmp_path / "nope", "--data", f)
    assert r.returncode == 2 and "router directory not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("route", "eval", "--router", f, "--data", f)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {f}: is a file, not a router directory", r.stderr


def test_missing_data_file(tmp_path):
    r = run_cli("route", "train", "--data", tmp_path / "none.jsonl", "--out", tmp_path / "r")
    assert r.returncode == 2 and "no such file" in r.stderr


def test_descriptions_file_gives_lines_or_lists_per_route(tmp_path):
    out = tmp_path / "r"
    r = run_cli("route", "train", "--data", EXAMPLES, "--out", out, "--descriptions", DESCRIPTIONS)
    assert r.returncode == 0, r.stderr
    assert "zero-shot topics (yours: code, finance, general, legal, math, medical)" in r.stderr
    topics = json.loads((out / "router.json").read_text())["training"]["descriptions"]
    assert topics["legal"] == ["Contracts and the clauses in them.", "Courts, lawsuits and legal rights.",
                               "Statutes and regulations."]  # examples/route_descriptions.yaml's list
    assert topics["math"] == ["Arithmetic word problems, algebra and mathematical reasoning."]  # its one line
    import numpy as np

    with np.load(out / "head.npz", allow_pickle=False) as z:
        assert z["prototypes"].shape == (sum(len(v) for v in topics.values()), 384)


def test_partial_descriptions_are_refused_without_builtin_topics(tmp_path):
    d = tmp_path / "d.yaml"
    d.write_text("legal: Contracts and courts.\ngeneral: [Small talk., Trivia.]\n")
    r = run_cli("route", "train", "--data", EXAMPLES, "--out", tmp_path / "r", "--descriptions", d,
                "--no-builtin-topics")
    assert r.returncode == 2 and "missing: code, finance, math, medical" in r.stderr


def test_descriptions_file_with_a_bad_entry_names_the_route(tmp_path):
    d = tmp_path / "d.yaml"
    d.write_text("legal: {a: 1}\n")
    r = run_cli("route", "train", "--data", EXAMPLES, "--out", tmp_path / "r", "--descriptions", d)
    assert r.returncode == 2 and "route 'legal'" in r.stderr and "Traceback" not in r.stderr
    d.write_text("legal: contracts and courts\ncode: programs\nlegal: statutes\n")  # plain YAML keeps the last
    r = run_cli("route", "train", "--data", EXAMPLES, "--out", tmp_path / "r", "--descriptions", d)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {d}:3: invalid YAML (key 'legal' given twice)", r.stderr
