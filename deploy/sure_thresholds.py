"""How sure the router must be before a sure-only adapter answers: one threshold per route, fitted on where
the prompts of every other eval set land.

A flagged adapter forgets: each prompt of another set that the router sends to it costs about that adapter's
measured loss on that set, against the model that would serve the prompt otherwise (the base for a general set,
the route's own model for another domain's set). With `share(t)` the part of a set whose probability for the
adapter's route is at least t, the expected loss that adapter brings a set is share(t) × loss. The budget `cost`
holds for each set as a whole: the losses every sure-only adapter brings it are summed (two adapters at 0.5 %
each would cost a general set 1 %). A route other prompts never resemble (code, say) gets a low bar and serves
most of its domain's prompts, one they often resemble gets a high bar, and a route no threshold makes safe gets
no sure-only adapter at all. Other domains count as much as the general sets: a legal adapter that forgets
finance costs every finance prompt mistaken for legal.

The fit starts each route at the lowest threshold at which its own losses alone stay within budget (no joint
answer can be lower), then, while some set's summed loss is over budget, raises one route's threshold to its
next value that lowers that overspend: the route that gives up the least of its own domain's prompts per unit
of overspend removed (a route whose own set is not given gives up nothing it can measure, so it goes first;
on a tie, the one removing more, then the smaller rise).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence

#: the candidate thresholds, lowest first
GRID = [round(0.5 + 0.01 * i, 2) for i in range(50)]  # 0.50 .. 0.99


class _Shares:
    """shares(col, route, t): the part of set `col` whose probability for `route` is at least t (None: the route has
    no sure-only adapter, 0); each set's probabilities for a route are sorted once, as the fit asks for many t."""

    def __init__(self, set_probs: Mapping[str, Sequence[Mapping[str, float]]]):
        self.set_probs, self.sorted = set_probs, {}

    def __call__(self, col: str, route: str, t: float | None) -> float:
        probs = self.set_probs.get(col)
        if t is None or not probs:
            return 0.0
        if (col, route) not in self.sorted:
            self.sorted[col, route] = sorted(p.get(route, 0.0) for p in probs)
        ps = self.sorted[col, route]
        return (len(ps) - bisect_left(ps, t)) / len(ps)


def fit_sure_thresholds(sure: Mapping[str, str], set_probs: Mapping[str, Sequence[Mapping[str, float]]],
                        loss: Mapping[str, Mapping[str, float]], cost: float,
                        floors: Mapping[str, float] | None = None) -> dict[str, float | None]:
    """Per sure-only route a threshold such that on every eval set the expected loss, summed over the sure-only
    routes that set's prompts reach, stays within `cost`.

    `sure`: route -> adapter; `set_probs`: eval set -> the router's probabilities (route -> p) for each of its
    prompts (a domain's set is named after its route, and does not count against that route); `loss`: adapter ->
    eval set -> relative NLL change against the model that serves the set otherwise (a gain counts as no loss);
    `floors`: route -> a threshold it must not go below. None for a route no threshold below 1 makes safe."""
    floors, share = floors or {}, _Shares(set_probs)

    def contrib(route: str, col: str, t: float | None) -> float:
        if col == route:
            return 0.0
        return share(col, route, t) * max(loss.get(sure[route], {}).get(col, 0.0), 0.0)

    def later(route: str, t: float | None) -> list[float | None]:
        """The thresholds above t, then None (no sure-only adapter)."""
        return [] if t is None else [g for g in GRID if g > t] + [None]

    # each route alone: the lowest threshold at which its losses fit the budget on every set
    t: dict[str, float | None] = {}
    for route in sure:
        floor = floors.get(route, GRID[0])
        start = [floor] + [g for g in GRID if g > floor] + [None]
        t[route] = next((g for g in start if g is None or all(contrib(route, c, g) <= cost for c in set_probs)), None)
    # together: raise bars until every set's summed loss fits
    while True:
        over = {c: sum(contrib(r, c, t[r]) for r in sure) - cost for c in set_probs}
        over = {c: x for c, x in over.items() if x > 1e-12}
        if not over:
            return t
        best = None
        for route in sorted(sure):
            for g in later(route, t[route]):
                relief = sum(min(x, contrib(route, c, t[route]) - contrib(route, c, g)) for c, x in over.items())
                if relief > 1e-12:
                    given_up = share(route, route, t[route]) - share(route, route, g)
                    key = (given_up / relief, -relief, 2.0 if g is None else g)  # then the smaller rise
                    if best is None or key < best[0]:
                        best = (key, route, g)
                    break
        if best is None:  # cannot happen: dropping every route contributing to a set removes its loss
            return t
        t[best[1]] = best[2]


def refit_for_new_model(table, route: str, probs: Sequence[Mapping[str, float]], cost: float) -> dict[str, dict]:
    """After `route` got a better model (an adopted candidate: `table.routes[route]`, its gain in `table.quality`),
    re-check the other sure-only routes' thresholds on `route`'s prompts: a flagged adapter that such a prompt
    reaches now costs it against the new model, a larger loss than against the one the audit measured, and the
    losses of all of them together must fit the budget on `route`'s set.

    `probs`: the router's probabilities for each prompt of `route`'s eval set (the router the thresholds were
    fitted for). A threshold only rises (the other sets' constraints still hold above it); a route no threshold
    below 1 makes safe loses its sure-only adapter. The loss comes from the audit's gains over the base on
    `route` (NLL = base NLL × (1 − gain)), so nothing is scored again; a flagged adapter without a gain on `route`
    is left as it was. Changes `table` and returns, per re-checked route, what changed and why."""
    new = table.routes[route]
    gains = table.quality.get(route, {})
    checked = {r: a for r, a in sorted(table.sure.items()) if r != route and a in gains and new in gains}
    if not checked or not probs:
        return {}
    loss = {a: {route: (1 - gains[a]) / (1 - gains[new]) - 1} for a in set(checked.values())}
    before = {r: table.sure_threshold(r) for r in checked}
    fitted = fit_sure_thresholds(checked, {route: probs}, loss, cost, floors=before)
    share, out = _Shares({route: probs}), {}
    for r, adapter in checked.items():
        after = fitted[r]
        out[r] = {"adapter": adapter, "before": before[r], "after": after, "loss": round(loss[adapter][route], 6),
                  "share": round(share(route, r, before[r] if after is None else after), 6), "prompts": len(probs)}
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
