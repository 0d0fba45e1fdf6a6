"""`forgetless audit`: score the base and every adapter on every domain's eval set and the general sets,
report what each adapter gained and what it forgot, and write the quality-gated routing table.

A route goes to the model with the lowest NLL on that route's eval set, provided it is the base or an adapter
that is not flagged for forgetting (general NLL worse than base by more than `forgetting_limit`); a flagged
adapter that clearly wins its own route serves it only when the router is sure (`sure_min`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from classifier.data import read_jsonl
from classifier.errors import InputError
from deploy.adapter_check import check_adapter
from deploy.sure_thresholds import fit_sure_thresholds, route_probs
from gateway.routing_table import SURE_MIN, RoutingTable

GENERAL_COLUMNS = {"general": "general/eval.jsonl", "general_chat": "general/chat.jsonl", "wikitext": "general/text.jsonl"}
#: default expected relative NLL loss the sure-only adapters together may cost any other eval set (deploy/sure_thresholds.py)
SURE_COST = 0.005
#: significance a model needs to take a route from its default (sign test over the route's eval items), for the
#: table as a whole: each route is one more chance for a lucky challenger, so a single route's test uses
#: SWITCH_P / (routes a switch could happen on) (Bonferroni)
SWITCH_P = 0.1


@dataclass
class Column:
    name: str
    path: Path
    rows: list[dict]  # the first `limit` rows: what gets scored
    every_row: list[dict]  # the whole file: what the router's sure-only thresholds are fitted on


def eval_columns(eval_dir: Path, domains: list[str], limit: int) -> list[Column]:
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise InputError(f"{eval_dir}: eval directory not found")
    cols = []
    for d in domains:
        p = eval_dir / d / "eval.jsonl"
        if not p.is_file():
            raise InputError(f"{eval_dir}: missing {d}/eval.jsonl for route '{d}'")
        cols.append(p)
    names = list(domains)
    for name, rel in GENERAL_COLUMNS.items():
        if (eval_dir / rel).is_file():
            names.append(name)
            cols.append(eval_dir / rel)
    if not any(n in GENERAL_COLUMNS for n in names):
        raise InputError(f"{eval_dir}: missing general/eval.jsonl (needed to measure forgetting)")
    out = []
    for name, p in zip(names, cols):
        every = [obj for _, obj in read_jsonl(p)[0]]
        out.append(Column(name, p, every[:limit], every))
    return out


def relative(a: float, base: float) -> float:
    return (a - base) / base if base else 0.0


def forgetting_report(matrix: dict[str, dict[str, float]], base: str, adapters: list[str], general_cols: list[str],
                      limit: float) -> dict[str, dict]:
    """Per adapter: gain on its own column, relative NLL change on every column, worst general loss, flag."""
    report = {}
    for a in adapters:
        change = {c: relative(matrix[a][c], matrix[base][c]) for c in matrix[a]}
        worst = max((change[c] for c in general_cols if c in change), default=0.0)
        report[a] = {"own_domain_gain": -change[a] if a in change else None, "relative_nll_change": change,
                     "worst_general_loss": worst, "flagged": worst > limit}
    return report


def build_table(matrix: dict[str, dict[str, float]], base: str, adapters: list[str], routes: list[str],
                general_cols: list[str], limit: float, fallback: str | None = None,
                switch_margin: float = 0.02, sure_min: float | None = SURE_MIN,
                item_nlls: dict[str, dict[str, list[float]]] | None = None,
                set_probs: dict[str, list[dict[str, float]]] | None = None, sure_cost: float = SURE_COST,
                router_fp: str | None = None) -> tuple[RoutingTable, dict[str, dict]]:
    """Top-1 table: each route goes to the usable model (base or unflagged adapter) with the lowest NLL on its eval
    set. Differences within `switch_margin` (relative NLL) count as ties, settled for the route's own adapter when
    it beats the base, else for the base: on a few eval items another adapter can win a route by chance, and
    taking the route from its specialist on noise costs far more than the noise.

    `quality` keeps every model's relative gain over the base per route (flagged adapters too: their losses are
    in it) for expected-quality routing; the fallback route's quality is the mean over all general sets, since
    every kind of general request lands there.

    A flagged adapter that beats the base on its own route by more than `switch_margin`, where the base would
    serve that route otherwise, becomes the route's sure-only model: it serves prompts the router gives that route
    a probability of at least `sure_min` (None: never). Forgetting hurts only the other prompts that reach the
    adapter (general ones, and other domains'), and the router rarely gives them such a probability for the
    adapter's route. Given the router's probabilities on the prompts of every eval set (`set_probs`: set -> one
    dict per prompt, for the router with fingerprint `router_fp`), each such route gets its own threshold
    instead, fitted so that the expected loss the sure-only adapters together bring every other set stays within
    `sure_cost`, measured against the model that serves that set otherwise (deploy/sure_thresholds.py); a route no
    threshold makes safe gets no sure-only adapter.

    Given per-item NLLs (`item_nlls`: model -> column -> per-token NLL of each item), a model other than the
    route's default takes the route only if it is also better on significantly many items (one-sided sign test,
    p <= SWITCH_P / the number of routes with a challenger, so that the whole table has at most a SWITCH_P chance
    of a switch made on noise): choosing the best of several models on a few items favours whichever was lucky
    on them, and with six routes tested at p <= 0.1 each, the chance that some route switches on noise
    is up to 1 - 0.9^6, about 47 %."""
    report = forgetting_report(matrix, base, adapters, general_cols, limit)
    flagged = [a for a in adapters if report[a]["flagged"]]
    usable = [base] + [a for a in adapters if a not in flagged]
    table = RoutingTable(flagged=flagged, sure_min=sure_min if sure_min is not None else SURE_MIN)

    def route_cols(r: str) -> list[str]:
        cols = [c for c in general_cols if c in matrix[base]] if r == fallback else [r]
        return cols if cols and all(c in matrix[base] for c in cols) else []

    contested = sum(1 for r in routes if route_cols(r)) if len(usable) > 1 else 0
    p_max = SWITCH_P / max(contested, 1)
    for r in routes:
        cols = route_cols(r)
        if cols:
            gain = {m: -sum(relative(matrix[m][c], matrix[base][c]) for c in cols) / len(cols) for m in [base, *adapters]}
            best = max(usable, key=lambda m: gain[m])
            default = r if r in usable and gain[r] > 0 else base
            switch = gain[best] - gain[default] > switch_margin and (
                item_nlls is None or wins_consistently(item_nlls, best, default, cols, p_max))
            table.routes[r] = best if switch else default
            table.quality[r] = {m: round(g, 6) for m, g in gain.items()}
            if sure_min is not None and r != fallback and r in flagged and table.routes[r] == base \
                    and gain[r] > switch_margin:
                table.sure[r] = r
        else:
            table.routes[r] = base
    if set_probs is not None and table.sure:
        # what a prompt of each set gets when it does not reach the adapter: the base for general sets, else its
        # route's top-1 model
        other = {c: base if c in general_cols else table.routes.get(c, base) for c in set_probs}
        loss = {a: {c: relative(matrix[a][c], matrix[m][c]) for c, m in other.items() if c in matrix[a] and c in matrix[m]}
                for a in set(table.sure.values())}
        fitted = fit_sure_thresholds(table.sure, set_probs, loss, sure_cost)
        table.sure = {r: a for r, a in table.sure.items() if fitted[r] is not None}
        table.sure_mins = {r: t for r, t in fitted.items() if t is not None}
        table.sure_router = router_fp
    return table, report


def wins_consistently(item_nlls: dict[str, dict[str, list[float]]], challenger: str, holder: str, cols: list[str],
                      p_max: float | None = None) -> bool:
    """Whether `challenger` has a lower NLL than `holder` on significantly many of the items (one-sided sign
    test; ties dropped)."""
    from scipy.stats import binomtest

    pairs = [(c, h) for col in cols for c, h in zip(item_nlls[challenger][col], item_nlls[holder][col])]
    wins, losses = sum(c < h for c, h in pairs), sum(c > h for c, h in pairs)
    if wins + losses == 0:
        return False
    return binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue <= (SWITCH_P if p_max is None else p_max)


def eval_route_probs(cfg, columns: list[Column], log=print):
    """(eval set -> the configured router's probabilities for each prompt of its whole file, the router's
    fingerprint), or None when there is no trained router yet (sure-only routes then use the fixed threshold)."""
    path = cfg.router.path
    if not (Path(path) / "router.json").is_file():
        log(f"no router at {path} yet: sure-only routes use the fixed threshold (train the router, then audit again)")
        return None
    router = cfg.router.load_router()
    probs = route_probs(router, {c.name: c.every_row for c in columns})
    log(f"sure-only thresholds fitted on {sum(map(len, probs.values()))} prompts of {len(probs)} eval sets "
        f"(router {router.fingerprint()})")
    return probs, router.fingerprint()


def require_models(url: str, names: list[str], headers: dict | None = None, what: str = "vLLM") -> None:
    """Fail with one line unless vLLM (or the gateway: `what`) at `url` answers and serves every model in `names`."""
    import httpx

    try:
        r = httpx.get(f"{url.rstrip('/')}/v1/models", headers=headers or {}, timeout=30)
        r.raise_for_status()
        served = {m["id"] for m in r.json()["data"]}
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        hint = "start `forgetless serve` or pass --url" if what == "vLLM" else "check --gateway and FORGETLESS_ADMIN_KEY"
        raise InputError(f"no {what} answering at {url} ({type(exc).__name__}); {hint}") from None
    missing = [n for n in names if n not in served]
    if missing:
        raise InputError(f"{what} at {url} does not serve {', '.join(missing)} (served: {', '.join(sorted(served))})")


def admin_headers(admin_key: str | None) -> dict[str, str]:
    """The gateway's admin key as a header, or one line saying it is missing."""
    if not admin_key:
        raise InputError("--gateway: set FORGETLESS_ADMIN_KEY to the gateway's admin key")
    return {"Authorization": f"Bearer {admin_key}"}


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def heatmap(matrix: dict[str, dict[str, float]], base: str, columns: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(matrix)
    rel = np.array([[relative(matrix[r][c], matrix[base][c]) * 100 for c in columns] for r in rows])
    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2, 0.5 * len(rows) + 1.5))
    lim = max(5.0, float(np.abs(rel).max()))
    ax.imshow(rel, cmap="RdYlGn_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(columns)):
            ax.text(j, i, f"{matrix[rows[i]][columns[j]]:.2f}\n{rel[i, j]:+.0f}%", ha="center", va="center", fontsize=7)
    ax.set_title("NLL per model and eval set (colour: % change vs base; green = better)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run_audit(cfg, eval_dir: Path, out_dir: Path, limit: int = 20, forgetting_limit: float = 0.05,
              url: str | None = None, task_limit: int = 8, switch_margin: float = 0.02, sure_min: float | None = SURE_MIN,
              fit_sure: bool = True, sure_cost: float = SURE_COST, gateway: str | None = None,
              gateway_headers: dict | None = None, log=print) -> dict:
    """Score base + adapters (starting vLLM unless `url` points at one) and write the matrix and routing table.

    With `gateway` (the URL of a gateway in front of a vLLM that serves traffic; its admin key in `gateway_headers`), the scoring
    goes through that gateway, which sends each prompt-logprobs request to vLLM alone (batched with live requests
    they crash vLLM 0.32).

    Sure-only routes get thresholds fitted on the configured router's probabilities for every prompt of the
    eval sets (whole files, not only the `limit` scored ones) when `fit_sure` and the router exists, else the
    fixed `sure_min` (None: no sure-only routes).

    Besides the NLL, every model answers up to `task_limit` checkable items per eval set (final-number exact
    match, code pass@1; deploy/task_metrics.py) with greedy decoding; 0 skips that."""
    from classifier.progress import LoggedProgress
    from deploy.scoring import NllScorer, per_token, token_mean
    from deploy.serve import HOME, resolve_base
    from deploy.task_eval import vllm_task_scores
    from deploy.vllm_server import VllmServer

    adapters = [a.name for a in cfg.adapters]
    if not adapters:
        raise InputError(f"{cfg.source}: no adapters to audit")
    routes = adapters
    columns = eval_columns(eval_dir, routes, limit)
    # the router's view of the eval prompts first: a router that does not load fails before the slow scoring
    fit = eval_route_probs(cfg, columns, log) if fit_sure and sure_min is not None else None
    base_dir = resolve_base(cfg, log)
    for a in cfg.adapters:  # one line naming the adapter, before vLLM would fail on it with a traceback in its log
        check_adapter(a.path, base_dir, cfg.vllm.max_lora_rank)
    server, what, headers = None, "vLLM", {}
    if gateway:
        url, what, headers = gateway.rstrip("/"), "gateway", gateway_headers or {}
    elif url is None:
        server = VllmServer(cfg, base_dir, HOME / "logs" / f"vllm-audit-{cfg.vllm.port}.log", all_cpus=True).start(log=log)
        url = server.url
    try:
        require_models(url, [cfg.base.name, *adapters], headers, what)
        scorer = NllScorer(url, base_dir, headers=headers)
        items = {c.name: [scorer.item(r) for r in c.rows] for c in columns}
        models = [cfg.base.name, *adapters]
        matrix: dict[str, dict[str, float]] = {m: {} for m in models}
        per_item: dict[str, dict[str, list[float]]] = {m: {} for m in models}
        total = sum(len(v) for v in items.values()) * len(models)
        with LoggedProgress() as bar:
            task = bar.add_task(f"scoring {len(models)} models × {len(columns)} eval sets", total=total)
            for m in models:
                for c in columns:
                    got = scorer.item_nlls(m, items[c.name], progress=lambda: bar.advance(task))
                    matrix[m][c.name] = token_mean(got)
                    per_item[m][c.name] = per_token(got)
            tasks = vllm_task_scores(url, scorer.tok, models, {c.name: c.rows for c in columns}, task_limit, bar,
                                     headers=headers)
    finally:
        if server is not None:
            server.stop()
    general_cols = [c.name for c in columns if c.name in GENERAL_COLUMNS]
    fallback = cfg.router.fallback
    table, report = build_table(matrix, cfg.base.name, adapters, [*routes, fallback], general_cols, forgetting_limit, fallback,
                                switch_margin, sure_min, item_nlls=per_item, set_probs=fit and fit[0],
                                sure_cost=sure_cost, router_fp=fit and fit[1])
    table.routes[fallback] = cfg.base.name  # the fallback route is the base model by definition; its quality row stays
    doc = {"metric": "nll", "base": cfg.base.name, "columns": [c.name for c in columns], "items_per_column": limit,
           "forgetting_limit": forgetting_limit, "switch_margin": switch_margin, "matrix": matrix, "adapters": report, "flagged": table.flagged,
           "routes": table.routes, "sure": table.sure, "sure_min": sure_min, "sure_mins": table.sure_mins,
           "sure_cost": sure_cost if table.sure_router else None, "quality": table.quality, "tasks": tasks,
           "task_items_per_column": task_limit}
    out_dir = Path(out_dir)
    write_atomic(out_dir / "audit.json", json.dumps(doc, indent=2) + "\n")
    heatmap(matrix, cfg.base.name, doc["columns"], out_dir / "audit.png")
    write_atomic(out_dir / "audit.md", markdown(doc))
    table_path = cfg.router.table or out_dir / "routing_table.json"
    write_atomic(Path(table_path), table.to_json())
    doc["table_path"] = str(table_path)
    return doc


def markdown(doc: dict) -> str:
    cols, base = doc["columns"], doc["base"]
    lines = ["# Adapter audit", "", f"Metric: mean per-token NLL of reference answers (lower is better), "
             f"{doc['items_per_column']} items per eval set; forgetting limit {doc['forgetting_limit']:.0%} on general sets.", "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m, row in doc["matrix"].items():
        cells = [f"{row[c]:.3f}" if m == base else f"{row[c]:.3f} ({(row[c] - doc['matrix'][base][c]) / doc['matrix'][base][c]:+.1%})"
                 for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "| adapter | gain on own domain | worst general loss | verdict |", "|---|---|---|---|"]
    for a, r in doc["adapters"].items():
        gain = "n/a" if r["own_domain_gain"] is None else f"{r['own_domain_gain']:+.1%}"
        chosen = doc["routes"].get(a)
        sure = doc.get("sure", {}).get(a) == a
        verdict = (f"flagged: forgets general ability; serves {a} only when the router is ≥ {sure_at(doc, a):.0%} sure"
                   if sure else "flagged: forgets general ability") if r["flagged"] else "used" if chosen == a else (
            "not used: does not beat the base on its domain" if chosen == base or not (r["own_domain_gain"] or 0) > 0
            else f"not used: {chosen} beats it on {a} by more than the switch margin")
        lines.append(f"| {a} | {gain} | {r['worst_general_loss']:+.1%} | {verdict} |")
    lines += task_markdown(doc)
    lines += ["", "Routing table: " + ", ".join(f"{r} → {m}" for r, m in doc["routes"].items())
              + "".join(f" ({m} when ≥ {sure_at(doc, r):.0%} sure)" for r, m in doc.get("sure", {}).items()),
              "", "![heatmap](audit.png)", ""]
    return "\n".join(lines)


def sure_at(doc: dict, route: str) -> float:
    return (doc.get("sure_mins") or {}).get(route, doc["sure_min"])


def task_markdown(doc: dict) -> list[str]:
    """The task-score table (share of items answered right, greedy decoding), if any eval set had task items."""
    tasks = doc.get("tasks") or {}
    cols = [c for c in doc["columns"] if any(c in row for row in tasks.values())]
    if not cols:
        return []
    base = doc["base"]
    first = next(iter(tasks.values()))
    lines = ["", "Task scores (greedy decoding; share of checkable items answered right; not used for routing):", "",
             "| model | " + " | ".join(f"{c} {first[c]['metric']} (n={first[c]['n']})" for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for m, row in tasks.items():
        cells = [f"{row[c]['score']:.0%}" + ("" if m == base else f" ({(row[c]['score'] - tasks[base][c]['score']) * 100:+.0f} pt)")
                 for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines
