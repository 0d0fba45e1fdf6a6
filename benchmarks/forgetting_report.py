"""forgetting.md / forgetting.json / PNGs for `forgetless bench forgetting`."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.forgetting_regimes import DOMAINS
from deploy.audit import SURE_COST

GENERAL = ["general", "general_chat", "wikitext"]


def rel(a: float, b: float) -> float:
    return (a - b) / b if b else 0.0


def tradeoff_points(matrix: dict) -> dict[str, tuple[float, float]]:
    """(domain gain %, general loss %) per single adapter, for `mixed` and for `routed` (domain gain averaged
    over the five domains for the last two), all relative to the base."""
    base = matrix["base"]
    gen_loss = lambda row: 100 * sum(rel(row[c], base[c]) for c in GENERAL) / len(GENERAL)  # noqa: E731
    pts = {}
    for d in DOMAINS:
        row = matrix[f"adapter:{d}"]
        pts[d] = (-100 * rel(row[d], base[d]), gen_loss(row))
    for name in ("mixed", "routed"):
        row = matrix[name]
        pts[name] = (-100 * sum(rel(row[d], base[d]) for d in DOMAINS) / len(DOMAINS), gen_loss(row))
    return pts


def plot_tradeoff(doc: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"light": "o", "aggressive": "s"}
    per_regime = {name: tradeoff_points(r["matrix"]) for name, r in doc["regimes"].items()}
    names = [*DOMAINS, "mixed", "routed"]
    colors = dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for n in names:
        xs = [per_regime[r][n][0] for r in per_regime]
        ys = [per_regime[r][n][1] for r in per_regime]
        style = dict(color=colors[n], lw=2.5 if n == "routed" else 1, ls="-" if n in ("routed", "mixed") else ":")
        ax.plot(xs, ys, **style, label=n if n != "routed" else "routed (forgetless)")
        for r, x, y in zip(per_regime, xs, ys):
            ax.scatter([x], [y], color=colors[n], marker=markers.get(r, "^"), s=70 if n == "routed" else 35, zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("domain gain: NLL improvement on own domain vs base (%)")
    ax.set_ylabel("general loss: mean NLL change on the 3 general sets (%)")
    ax.set_title("Gain vs forgetting across training regimes (○ light, □ aggressive)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def markdown(doc: dict) -> str:
    cols = doc["columns"]
    lines = ["# Forgetting benchmark", "",
             f"Command: `{doc['command']}` ({doc['minutes']} min"
             + (f"; per-item scores of {', '.join(doc['scores_from_cache'])} reused from an earlier run with the same "
                "models, items and versions" if doc.get("scores_from_cache") else "") + ")  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + "  ",
             f"Metric: mean per-token NLL of the reference answer given the prompt, computed by {scorers(doc)}, "
             f"lower is better; {doc['items_per_column']} items per column (seeded sample). The audit that gates `routed` "
             f"and `routed_expected` used {doc['audit_items_per_column']} other items per column. Router: forgetless's default, "
             f"trained on {doc['router']['data']}.", "",
             "Rows: `base`; `adapter:<d>` alone; `mixed` = one LoRA on all five domains with the same total budget; "
             "`routed` = router top-1 → the audit's quality-gated table (a flagged adapter that wins its own domain serves it only "
             "when the router is sure enough: per route, a probability fitted so that the prompts of the other columns that "
             f"are not reported would cost each of those columns at most {SURE_COST:.1%}, all sure-only adapters' losses "
             "added up); `routed_expected` = "
             "expected-quality policy; "
             "`routed_ungated` = router top-1 → adapter of that name, no audit; `oracle` = adapter of the true domain "
             "(base for general columns).", ""]
    for c, reason in doc.get("skipped_regimes", {}).items():
        lines.append(f"**Regime `{c}` skipped:** {reason}.  ")
    lines += ["Router accuracy on these items (share routed to their own domain, general → fallback): " +
              ", ".join(f"{c} {v:.0%}" for c, v in doc["router"]["accuracy_on_eval_items"].items()), ""]
    for name, r in doc["regimes"].items():
        m, base = r["matrix"], r["matrix"]["base"]
        lines += [f"## Regime `{name}`: {r['description']}", "",
                  "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for row, vals in m.items():
            best = {c: min(m[x][c] for x in m if x not in ("oracle",)) for c in cols}
            cells = []
            for c in cols:
                txt = f"{vals[c]:.3f}" if row == "base" else f"{vals[c]:.3f} ({rel(vals[c], base[c]):+.1%})"
                cells.append(f"**{txt}**" if abs(vals[c] - best[c]) < 1e-9 else txt)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines += ["", "Forgetting per adapter (relative NLL change vs base on the general columns; + = worse):", "",
                  "| adapter | own-domain gain | " + " | ".join(GENERAL) + " | audit verdict |", "|---" * (len(GENERAL) + 3) + "|"]
        for d in DOMAINS:
            row = m[f"adapter:{d}"]
            sure = r["table"].get("sure", {}).get(d) == d
            at = r["table"].get("sure_mins", {}).get(d, r["table"]["sure_min"])
            verdict = (f"flagged (forgets): serves {d} when the router is ≥ {at:.0%} sure" if sure
                       else "flagged (forgets)") if d in r["table"]["flagged"] else (
                "used" if r["table"]["routes"].get(d) == d else f"route → {r['table']['routes'].get(d)}")
            lines.append(f"| {d} | {-rel(row[d], base[d]):+.1%} | " + " | ".join(f"{rel(row[c], base[c]):+.1%}" for c in GENERAL)
                         + f" | {verdict} |")
        t = r["targets"]
        best_row = {c: min((x for x in m if x not in ROUTED), key=lambda x: m[x][c]) for c in cols}
        lines += ["", "Routed vs the best single row, per column: " + ", ".join(
            f"{c} {rel(m['routed'][c], m[best_row[c]][c]):+.1%} vs {best_row[c]}" for c in cols), "",
            f"- routed within 2 % of oracle on every column: **{'yes' if t['met_oracle'] else 'no'}** "
            f"(worst {max(t['routed_within_2pct_of_oracle'].values()):+.1%}, "
            f"on {max(t['routed_within_2pct_of_oracle'], key=t['routed_within_2pct_of_oracle'].get)})",
            f"- routed never worse than base by more than 0.5 %: **{'yes' if t['met_base'] else 'no'}** "
            f"(worst {max(t['routed_vs_base'].values()):+.1%}, on {max(t['routed_vs_base'], key=t['routed_vs_base'].get)})"]
        if "met_mixed" in t:
            lines.append(f"- routed beats mixed on every general column: **{'yes' if t['met_mixed'] else 'no'}** (" +
                         ", ".join(f"{c} {v:+.1%}" for c, v in t["routed_vs_mixed_general"].items()) + ")")
        lines += miss_lines(r.get("misses"))
        lines += task_table(doc, r)
        lines += ["", f"![{name} heatmap](forgetting_{name}.png)", ""]
    lines += ["## What this shows", "", *verdicts(doc), "", "![trade-off](forgetting_tradeoff.png)", ""]
    return "\n".join(lines)


ROUTED = {"routed", "routed_expected", "routed_ungated", "oracle"}


def task_table(doc: dict, regime: dict) -> list[str]:
    """Task scores of one regime: share of the reported checkable items each row answered right (greedy)."""
    tasks = regime.get("tasks") or {}
    if not tasks:
        return []
    info = doc.get("task_items", {})
    cols = list(next(iter(tasks.values())))
    sandbox = info.get("_sandbox", {})
    note = "" if not sandbox else (" Code runs in a sandboxed subprocess (limits, timeout" +
                                   (", no network)." if sandbox.get("network_isolated") else "; network not isolated here)."))
    lines = ["", "Task scores (greedy decoding, share of the reported items with a checkable answer that came out right; "
             "a 135M model solves few, so differences of one item are noise):" + note, "",
             "| row | " + " | ".join(f"{c} {info.get(c, {}).get('metric', '')} (n={info.get(c, {}).get('n', '?')})" for c in cols)
             + " |", "|---" * (len(cols) + 1) + "|"]
    for row, vals in tasks.items():
        lines.append(f"| {row} | " + " | ".join(f"{vals[c]:.0%}" for c in cols) + " |")
    return lines


def verdicts(doc: dict) -> list[str]:
    """Plain sentences on where routing wins and where it does not, computed from the numbers."""
    out = []
    for name, r in doc["regimes"].items():
        m = r["matrix"]
        gen = {row: sum(rel(m[row][c], m["base"][c]) for c in GENERAL) / len(GENERAL) for row in m}
        dom = {row: -sum(rel(m[row][d], m["base"][d]) for d in DOMAINS) / len(DOMAINS) for row in m}
        worst = max(DOMAINS, key=lambda d: gen[f"adapter:{d}"])
        out.append(
            f"- **{name}**: single adapters change general NLL by {min(gen[f'adapter:{d}'] for d in DOMAINS):+.1%} to "
            f"{gen[f'adapter:{worst}']:+.1%} (worst: {worst}); `mixed` gains {dom['mixed']:+.1%} on the domains and changes "
            f"general by {gen['mixed']:+.1%}; `routed` gains {dom['routed']:+.1%} and changes general by {gen['routed']:+.1%} "
            f"(expected-quality: {dom['routed_expected']:+.1%} / {gen['routed_expected']:+.1%}; without the audit: "
            f"{dom['routed_ungated']:+.1%} / {gen['routed_ungated']:+.1%}). "
            + ("Routing beats `mixed` on both." if dom["routed"] > dom["mixed"] and gen["routed"] < gen["mixed"] else
               "Routing wins on the domains, `mixed` is as good or better on general." if dom["routed"] > dom["mixed"] else
               "Routing wins on general, `mixed` gains more on the domains." if gen["routed"] < gen["mixed"] else
               "`mixed` matches or beats routing here.")
        )
    return out


def write_report(doc: dict, out_dir: Path) -> None:
    from deploy.audit import heatmap

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, r in doc["regimes"].items():
        heatmap(r["matrix"], "base", doc["columns"], out_dir / f"forgetting_{name}.png")
    plot_tradeoff(doc, out_dir / "forgetting_tradeoff.png")
    (out_dir / "forgetting.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "forgetting.md").write_text(markdown(doc))


def scorers(doc: dict) -> str:
    """Who computed each regime's NLL: vLLM's prompt_logprobs, or transformers+peft in-process."""
    how = {"vllm": "vLLM (prompt_logprobs)", "peft": "transformers+peft in-process (float32)"}
    by = {}
    for name, rg in doc["regimes"].items():
        by.setdefault(how.get(rg.get("scorer", "vllm"), rg.get("scorer")), []).append(f"`{name}`")
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{who} for {', '.join(names)}" for who, names in by.items())


def miss_lines(misses: list[dict] | None) -> list[str]:
    """The reported items `routed` answered worse than `oracle` did, one line each, with the router's two most
    probable routes: with a few items per column, these single decisions are what the gaps above are made of."""
    if misses is None:
        return []
    if not misses:
        return ["", "No reported item was answered worse by `routed` than by `oracle`."]
    why = {"router": "router chose another route", "gate": "right route, the audit's table held the adapter back"}
    out = ["", f"Reported items `routed` answered more than 0.5 % worse than `oracle` ({len(misses)}; with 8 items a "
               "column, each one moves its column a lot):", ""]
    for x in misses:
        top = ", ".join(f"{r} {p:.3f}" for r, p in x["router"])
        out.append(f"- {x['column']}: {x['model']} instead of {x['oracle']} ({why[x['cause']]}; router: {top}), NLL "
                   f"{x['nll']:.3f} vs {x['oracle_nll']:.3f} ({(x['nll'] - x['oracle_nll']) / x['oracle_nll']:+.0%})")
    return out
