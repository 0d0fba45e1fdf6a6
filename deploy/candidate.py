"""`forgetless audit --candidate NAME=PATH`: audit before adopt.

The candidate adapter is loaded into the running vLLM, scored against the base and the model that serves its
route today (its route's eval set and the general sets), and admitted to the routing table only if it beats
that model on its domain without losing more than the forgetting limit on any general set. Otherwise it is
unloaded again and the reason is printed. The table is rewritten atomically; a running gateway picks it up
on `POST /admin/reload`.

With a gateway (`--gateway URL`), the scoring goes through it rather than straight to vLLM: the candidate is
registered there for the admin key only (`POST /admin/candidates`), and the gateway sends each prompt-logprobs
request to vLLM alone. vLLM 0.32 crashes when such a request shares a batch with live traffic, so this is how
to audit on a vLLM that is serving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx

from classifier.errors import InputError
from deploy.adapter_check import check_adapter
from deploy.audit import GENERAL_COLUMNS, SURE_COST, eval_columns, relative, require_models, write_atomic
from gateway.routing_table import RoutingTable


@dataclass
class Verdict:
    adopted: bool
    reason: str
    report: dict


def parse_candidate(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise InputError(f"--candidate '{spec}': expected NAME=PATH")
    return name.strip(), Path(path.strip())


def judge(matrix: dict[str, dict[str, float]], base: str, incumbent: str, cand: str, route: str,
          general_cols: list[str], limit: float) -> tuple[bool, str]:
    """Adopt when the candidate beats the incumbent on its route and forgets at most `limit` on general sets."""
    losses = {c: relative(matrix[cand][c], matrix[base][c]) for c in general_cols}
    worst_col = max(losses, key=losses.get)
    own, inc = matrix[cand][route], matrix[incumbent][route]
    if own >= inc:
        return False, f"does not beat {incumbent} on {route} (NLL {own:.4f} vs {inc:.4f})"
    if losses[worst_col] > limit:
        return False, f"forgets: NLL on {worst_col} {losses[worst_col]:+.1%} vs base (limit {limit:.0%})"
    return True, (f"beats {incumbent} on {route} (NLL {own:.4f} vs {inc:.4f}); worst general change "
                  f"{losses[worst_col]:+.1%} on {worst_col}")


def audit_candidate(cfg, spec: str, eval_dir: Path, out_dir: Path, route: str | None = None, limit: int = 20,
                    forgetting_limit: float = 0.05, url: str | None = None, task_limit: int = 8,
                    gateway: str | None = None, gateway_headers: dict | None = None, sure_cost: float = SURE_COST,
                    log=print) -> Verdict:
    from classifier.progress import LoggedProgress
    from deploy.scoring import NllScorer
    from deploy.serve import resolve_base
    from deploy.task_eval import vllm_task_scores

    name, path = parse_candidate(spec)
    route = route or name
    base = cfg.base.name
    if name in {base, cfg.router.virtual_model, *(a.name for a in cfg.adapters)}:
        raise InputError(f"--candidate '{name}': name already used by a configured model")
    if cfg.router.table is None:
        raise InputError(f"{cfg.source}: router.table is not set; the candidate needs a routing table to join")
    table = RoutingTable.load(cfg.router.table)
    if name in table.adopted:
        raise InputError(f"--candidate '{name}': already adopted in {cfg.router.table}")
    base_dir = resolve_base(cfg, log)
    check_adapter(path, base_dir, cfg.vllm.max_lora_rank)
    columns = eval_columns(eval_dir, [route], limit)
    url = (url or cfg.upstream_url).rstrip("/")
    incumbent = table.routes.get(route) or (route if route in {a.name for a in cfg.adapters} else base)
    require_models(url, sorted({base, incumbent}))
    score_url, headers = url, {}
    if gateway:
        score_url, headers = gateway.rstrip("/"), gateway_headers or {}
        require_models(score_url, sorted({base, incumbent}), headers, what="gateway")

    r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(Path(path).resolve())}, timeout=120)
    if r.status_code != 200:
        raise InputError(f"vLLM at {url} could not load adapter '{name}' from {path}: {r.text[:200]}")
    adopted = False
    try:
        if gateway:
            _gateway_call("POST", f"{score_url}/admin/candidates", headers, json={"name": name})
        scorer = NllScorer(score_url, base_dir, headers=headers)
        items = {c.name: [scorer.item(row) for row in c.rows] for c in columns}
        models = list(dict.fromkeys([base, incumbent, name]))
        matrix: dict[str, dict[str, float]] = {m: {} for m in models}
        with LoggedProgress() as bar:
            task = bar.add_task(f"scoring candidate '{name}'", total=sum(map(len, items.values())) * len(models))
            for m in models:
                for c in columns:
                    matrix[m][c.name] = scorer.mean_nll(m, items[c.name], progress=lambda: bar.advance(task))
            # reported beside the verdict, which the NLL decides (see deploy/audit.py)
            tasks = vllm_task_scores(score_url, scorer.tok, models, {c.name: c.rows for c in columns}, task_limit, bar,
                                     headers=headers)
        general_cols = [c.name for c in columns if c.name in GENERAL_COLUMNS]
        adopted, reason = judge(matrix, base, incumbent, name, route, general_cols, forgetting_limit)
        report = {"candidate": name, "path": str(path), "route": route, "incumbent": incumbent, "adopted": adopted,
                  "reason": reason, "forgetting_limit": forgetting_limit, "items_per_column": limit, "matrix": matrix,
                  "tasks": tasks}
        if adopted:
            table = RoutingTable.load(cfg.router.table)  # re-read: keep whatever else changed meanwhile
            table.routes[route] = name
            table.sure.pop(route, None)  # the adopted adapter serves the route outright
            table.sure_mins.pop(route, None)
            gain = lambda col: -relative(matrix[name][col], matrix[base][col])  # noqa: E731
            table.quality.setdefault(route, {base: 0.0})[name] = round(gain(route), 6)
            fallback = cfg.router.fallback  # its quality row averages the general sets, as the audit's does
            table.quality.setdefault(fallback, {base: 0.0})[name] = round(sum(map(gain, general_cols)) / len(general_cols), 6)
            table.adopted[name] = {"path": str(Path(path).resolve()), "route": route}
            report["sure_refit"] = refit_sure(cfg, table, route, next(c for c in columns if c.name == route), sure_cost, log)
            write_atomic(Path(cfg.router.table), table.to_json())
        write_atomic(Path(out_dir) / f"candidate-{name}.json", json.dumps(report, indent=2) + "\n")
        return Verdict(adopted, reason, report)
    finally:
        if gateway:  # adopted or not, it is no longer a candidate (an adopted one joins at the gateway's reload)
            try:
                httpx.delete(f"{score_url}/admin/candidates/{name}", headers=headers, timeout=60)
            except httpx.HTTPError:
                pass
        if not adopted:
            httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=120)


def refit_sure(cfg, table: RoutingTable, route: str, column, sure_cost: float, log=print) -> dict[str, dict]:
    """The other sure-only routes' thresholds, re-checked on `route`'s whole eval file now that a better model serves
    it (deploy/sure_thresholds.py); only thresholds fitted for the configured router are (a fixed --sure-min, or
    thresholds of another router, are not fitted on prompts at all)."""
    from deploy.sure_thresholds import refit_for_new_model, route_probs

    others = [r for r in table.sure if r != route]
    if not others or table.sure_router is None or not (Path(cfg.router.path) / "router.json").is_file():
        return {}
    router = cfg.router.load_router()
    if router.fingerprint() != table.sure_router:
        return {}
    changes = refit_for_new_model(table, route, route_probs(router, {route: column.every_row})[route], sure_cost)
    for r, c in changes.items():
        if c["after"] is None:
            log(f"sure-only route '{r}' dropped: its adapter would cost {route}'s prompts more than {sure_cost:.1%} "
                f"against '{table.routes[route]}' at any threshold")
        else:
            moved = f"{c['before']:g} -> {c['after']:g}" if c["after"] > c["before"] else f"{c['after']:g} holds"
            log(f"sure-only route '{r}': threshold {moved} on {route}'s {c['prompts']} prompts ('{c['adapter']}' "
                f"costs them {c['loss']:+.1%} against '{table.routes[route]}'; {c['share']:.1%} reach it)")
    return changes


def _gateway_call(method: str, url: str, headers: dict, **kw) -> httpx.Response:
    """One admin call to the gateway, or one line saying why it failed."""
    try:
        r = httpx.request(method, url, headers=headers, timeout=60, **kw)
    except httpx.HTTPError as exc:
        raise InputError(f"--gateway: no gateway answering at {url.split('/admin')[0]} ({type(exc).__name__})") from None
    if r.status_code != 200:
        try:
            why = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            why = r.text[:200]
        raise InputError(f"--gateway: {method} {url} answered HTTP {r.status_code}: {why}")
    return r
