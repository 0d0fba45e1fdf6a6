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
