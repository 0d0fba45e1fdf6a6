"""How sure the router must be before a sure-only adapter answers: one threshold per route, fitted on where
the prompts of every other eval set land.

A flagged adapter forgets: each prompt of another set that the router sends to it costs about that adapter's
measured loss on that set, against the model that would serve the prompt otherwise (the base for a general set,
the route's own model for another domain's set). With `share(t)` the part of a set whose probability for the
adapter's route is at least t, the expected loss on that set is share(t) × loss. The threshold is the lowest t
(from 0.5 up) at which that product stays within `cost` on every set but the route's own: a route other prompts
never resemble (code, say) gets a low bar and serves most of its domain's prompts, one they often resemble gets
a high bar, and a route no threshold makes safe gets no sure-only adapter at all. Other domains count as much as
the general sets: a legal adapter that forgets finance costs every finance prompt mistaken for legal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: the candidate thresholds, lowest first
GRID = [round(0.5 + 0.01 * i, 2) for i in range(50)]  # 0.50 .. 0.99


def fit_sure_thresholds(sure: Mapping[str, str], set_probs: Mapping[str, Sequence[Mapping[str, float]]],
                        loss: Mapping[str, Mapping[str, float]], cost: float) -> dict[str, float | None]:
    """Per sure-only route: the lowest threshold keeping share(t) × loss within `cost` on every other eval set.

    `sure`: route -> adapter; `set_probs`: eval set -> the router's probabilities (route -> p) for each of its
    prompts (a domain's set is named after its route, and does not count against that route); `loss`: adapter ->
    eval set -> relative NLL change against the model that serves the set otherwise (a gain counts as no loss).
    None for a route no threshold below 1 makes safe."""
    out: dict[str, float | None] = {}
    for route, adapter in sure.items():
        out[route] = None
        for t in GRID:
            worst = 0.0
            for col, probs in set_probs.items():
                if col == route or not probs:
                    continue
                share = sum(1 for p in probs if p.get(route, 0.0) >= t) / len(probs)
                worst = max(worst, share * max(loss.get(adapter, {}).get(col, 0.0), 0.0))
            if worst <= cost:
                out[route] = t
                break
    return out


def refit_for_new_model(table, route: str, probs: Sequence[Mapping[str, float]], cost: float) -> dict[str, dict]:
    """After `route` got a better model (an adopted candidate: `table.routes[route]`, its gain in `table.quality`),
    re-check every other sure-only route's threshold on `route`'s prompts: a flagged adapter that such a prompt
    reaches now costs it against the new model, a larger loss than against the one the audit measured.

    `probs`: the router's probabilities for each prompt of `route`'s eval set (the router the thresholds were
    fitted for). A threshold only rises (the other sets' constraints still hold above it); a route no threshold
    below 1 makes safe loses its sure-only adapter. The loss comes from the audit's gains over the base on
    `route` (NLL = base NLL × (1 − gain)), so nothing is scored again; a flagged adapter without a gain on `route`
    is left as it was. Changes `table` and returns, per re-checked route, what changed and why."""
    new = table.routes[route]
    gains = table.quality.get(route, {})
    out: dict[str, dict] = {}
    for r, adapter in sorted(table.sure.items()):
        if r == route or adapter not in gains or new not in gains or not probs:
            continue
        loss = (1 - gains[adapter]) / (1 - gains[new]) - 1
        before = table.sure_threshold(r)
        bar = fit_sure_thresholds({r: adapter}, {route: probs}, {adapter: {route: loss}}, cost)[r]
        after = None if bar is None else max(before, bar)
        share = sum(1 for p in probs if p.get(r, 0.0) >= (before if after is None else after)) / len(probs)
        out[r] = {"adapter": adapter, "before": before, "after": after, "loss": round(loss, 6),
                  "share": round(share, 6), "prompts": len(probs)}
        if after is None:
            del table.sure[r]
            table.sure_mins.pop(r, None)
        else:
            table.sure_mins[r] = after
    return out


def route_probs(router, sets: Mapping[str, Sequence[Mapping]]) -> dict[str, list[dict[str, float]]]:
    """Per eval set, the router's probabilities for each row that has text to route, decided one at a time as the
    gateway does (batched, the int8 encoder's scores shift slightly with the rest of the batch); with a progress
    bar, since a few thousand prompts take a while on CPU."""
    from classifier.progress import LoggedProgress

    texts = {name: [t for t in map(routing_text, rows) if t.strip()] for name, rows in sets.items()}
    n = sum(map(len, texts.values()))
    out: dict[str, list[dict[str, float]]] = {}
    with LoggedProgress() as bar:
        task = bar.add_task(f"router probabilities for {n} eval prompts", total=n)
        for name, ts in texts.items():
            out[name] = []
            for t in ts:
                out[name].append(router.decide(t).probs)
                bar.advance(task)
    return out


def routing_text(row: Mapping) -> str:
    """What the router reads of an eval row: the last user message of a chat, or the prose itself."""
    if "messages" in row:
        users = [m.get("content") for m in row["messages"][:-1] if isinstance(m, Mapping) and m.get("role") == "user"]
        users = [u for u in users if isinstance(u, str)]
        return users[-1] if users else ""
    text = row.get("text", "")
    return text[:2000] if isinstance(text, str) else ""
