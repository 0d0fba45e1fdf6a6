"""The audit's routing table: quality-gated top-1 table, expected-quality choice, and damaged files."""

from __future__ import annotations

import json

import pytest

from classifier.errors import InputError
from deploy.audit import build_table
from deploy.candidate import judge, parse_candidate
from gateway.routing_table import RoutingTable

# NLL per model and eval set: `legal` wins its domain but forgets general; `math` wins and forgets nothing;
# `finance` does not beat the base on finance.
MATRIX = {
    "base": {"legal": 2.0, "math": 1.0, "finance": 2.0, "general": 2.0},
    "legal": {"legal": 1.5, "math": 1.1, "finance": 2.1, "general": 2.06},
    "math": {"legal": 2.0, "math": 0.8, "finance": 2.0, "general": 2.01},
    "finance": {"legal": 2.0, "math": 1.0, "finance": 2.05, "general": 2.0},
}


def _table(limit=0.05):
    return build_table(MATRIX, "base", ["legal", "math", "finance"], ["legal", "math", "finance", "general"], ["general"], limit,
                       fallback="general")


def test_table_gates_on_measured_quality():
    table, report = _table()
    assert table.routes == {"legal": "legal", "math": "math", "finance": "base", "general": "base"}
    assert report["legal"]["worst_general_loss"] == pytest.approx(0.03)
    assert not table.flagged
    strict, report = _table(limit=0.02)  # legal's 3 % general loss is now too much: its route goes to the base
    assert strict.flagged == ["legal"] and strict.routes["legal"] == "base"
    # expected quality still knows legal's gain and its loss: used only when the router is sure of legal
    assert strict.quality["legal"]["legal"] == pytest.approx(0.25)
    assert strict.expected_quality({"legal": 0.95, "general": 0.05}, {"base", "legal"}, "base") == "legal"
    assert strict.expected_quality({"legal": 0.1, "general": 0.9}, {"base", "legal"}, "base") == "base"
    # top-1: the flagged legal adapter wins its route by 25 %, so it serves legal prompts the router is sure of
    assert strict.sure == {"legal": "legal"} and strict.sure_min == 0.9
    assert strict.model_for("legal", 0.95) == "legal" and strict.model_for("legal", 0.8) == "base"
    assert strict.model_for("legal") == "base" and strict.model_for("math", 0.99) == "math"
    off, _ = build_table(MATRIX, "base", ["legal", "math", "finance"], ["legal", "math", "finance", "general"],
                         ["general"], 0.02, fallback="general", sure_min=None)
    assert not off.sure and off.model_for("legal", 0.99) == "base"
    # a flagged adapter that does not clearly beat the base on its route gets no sure-only route
    weak = {**MATRIX, "legal": {**MATRIX["legal"], "legal": 1.99}}
    t, _ = build_table(weak, "base", ["legal", "math", "finance"], ["legal", "math", "finance", "general"], ["general"],
                       0.02, fallback="general")
    assert t.flagged == ["legal"] and not t.sure


def test_switch_margin_keeps_routes_with_their_specialist_on_small_differences():
    m = {"base": {"legal": 2.0, "finance": 2.0, "general": 2.0},
         "legal": {"legal": 1.60, "finance": 2.0, "general": 2.0},  # 20 % better than base on legal
         "finance": {"legal": 1.58, "finance": 1.5, "general": 2.0}}  # 1 point better still: within the margin
    routes = ["legal", "finance", "general"]
    table, _ = build_table(m, "base", ["legal", "finance"], routes, ["general"], 0.05, fallback="general")
    assert table.routes["legal"] == "legal" and table.routes["finance"] == "finance"
    m["finance"]["legal"] = 1.40  # now 10 points better than the legal adapter: it takes the route
    table, _ = build_table(m, "base", ["legal", "finance"], routes, ["general"], 0.05, fallback="general")
    assert table.routes["legal"] == "finance"
    table, _ = build_table(m, "base", ["legal", "finance"], routes, ["general"], 0.05, fallback="general", switch_margin=0.2)
    assert table.routes["legal"] == "legal"
    # a route whose own adapter does not beat the base: ties go to the base, clear wins to the winner
    m["legal"]["legal"] = 2.02
    m["finance"]["legal"] = 1.99
    table, _ = build_table(m, "base", ["legal", "finance"], routes, ["general"], 0.05, fallback="general")
    assert table.routes["legal"] == "base"
    m["finance"]["legal"] = 1.80
    table, _ = build_table(m, "base", ["legal", "finance"], routes, ["general"], 0.05, fallback="general")
    assert table.routes["legal"] == "finance"


def test_expected_quality_prefers_base_when_unsure():
    table, _ = _table()
    models = {"base", "legal", "math", "finance"}
    assert table.quality["legal"]["legal"] == pytest.approx(0.25)
    # confident legal: the legal adapter
    assert table.expected_quality({"legal": 0.95, "general": 0.05}, models, "base") == "legal"
    # mostly general: 0.1 × 0.25 gain on legal < 0.9 × 0.03 loss on general → the base
    assert table.expected_quality({"legal": 0.1, "general": 0.9}, models, "base") == "base"
    # the math adapter helps math a lot and barely hurts general: chosen even at 40 %
    assert table.expected_quality({"math": 0.4, "general": 0.6}, models, "base") == "math"
    # a model that is not served is never chosen
    assert table.expected_quality({"math": 0.9, "general": 0.1}, {"base", "legal"}, "base") == "base"


def test_table_round_trip_and_damaged_files(tmp_path):
    table, _ = _table()
    p = tmp_path / "table.json"
    p.write_text(table.to_json())
    back = RoutingTable.load(p)
    assert back.routes == table.routes and back.quality == table.quality
    strict, _ = _table(limit=0.02)
    p.write_text(strict.to_json())
    back = RoutingTable.load(p)
    assert back.sure == {"legal": "legal"} and back.sure_min == 0.9
    assert RoutingTable(routes={"legal": "base"}).model_for("legal", 1.0) == "base"  # files without "sure"
    assert RoutingTable.load(tmp_path / "absent.json").routes == {}
    for text, msg in [("{not json", "not valid JSON"), ('{"x": 1}', "needs a 'routes' object"),
                      ('{"routes": {"a": 1}}', "map route names"), ('{"routes": {}, "quality": {"a": 3}}', "'quality'"),
                      ('{"routes": {}, "sure": ["legal"]}', "'sure' must map"),
                      ('{"routes": {}, "sure_min": 1.5}', "'sure_min' must be a probability"),
                      ('{"routes": {}, "sure_min": "high"}', "'sure_min' must be a probability"),
                      ('{"routes": {}, "sure_mins": {"legal": 0.2}}', "'sure_mins' must map"),
                      ('{"routes": {}, "sure_mins": {"legal": true}}', "'sure_mins' must map"),
                      ('{"routes": {}, "sure_router": 7}', "'sure_router' must be"),
                      (b"\xff\xfe", "not valid JSON")]:
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
        with pytest.raises(InputError, match=msg) as exc:
            RoutingTable.load(p)
        assert str(p) in str(exc.value) and "\n" not in str(exc.value)
    p.write_text(json.dumps({"routes": {"legal": "ghost"}}))
    with pytest.raises(InputError, match="'ghost', which is not served"):
        RoutingTable.load(p).check_models({"base", "legal"}, p)
    p.write_text(json.dumps({"routes": {"legal": "base"}, "sure": {"legal": "ghost"}}))
    with pytest.raises(InputError, match="'ghost', which is not served"):
        RoutingTable.load(p).check_models({"base", "legal"}, p)


def test_sure_thresholds_fitted_per_route_from_where_general_prompts_land(tmp_path):
    from deploy.sure_thresholds import fit_sure_thresholds

    # 100 general prompts: none looks like code, 4 look like legal with p 0.995, 1 with p 0.7
    general = [{"general": 0.9, "legal": 0.05, "code": 0.05} for _ in range(95)]
    general += [{"legal": 0.995, "general": 0.005}] * 4 + [{"legal": 0.7, "general": 0.3}]
    loss = {"legal": {"general": 0.25}, "code": {"general": 0.25}}
    fitted = fit_sure_thresholds({"legal": "legal", "code": "code"}, {"general": general}, loss, cost=0.01)
    # code: no general prompt reaches it at any threshold; legal: 5 % × 25 % > 1 % at 0.7, 4 % × 25 % = 1 % above it
    assert fitted == {"code": 0.5, "legal": 0.71}
    assert fit_sure_thresholds({"legal": "legal"}, {"general": general}, loss, cost=0.005) == {"legal": None}
    # an adapter that does not lose on a set is free to take all of it
    assert fit_sure_thresholds({"legal": "legal"}, {"general": general}, {"legal": {"general": -0.01}}, 0.0) == {"legal": 0.5}

    # in the audit's table: legal is flagged (3 % general loss) and wins its route: a threshold fitted for this router
    strict, _ = build_table(MATRIX, "base", ["legal", "math", "finance"], ["legal", "math", "finance", "general"],
                            ["general"], 0.02, fallback="general", set_probs={"general": general}, sure_cost=0.0013,
                            router_fp="r1")
    assert strict.sure == {"legal": "legal"} and strict.sure_mins == {"legal": 0.71} and strict.sure_router == "r1"
    assert strict.model_for("legal", 0.75, "r1") == "legal" and strict.model_for("legal", 0.7, "r1") == "base"
    # another router's probabilities are not what the threshold was fitted on: the default 0.9 applies
    assert strict.model_for("legal", 0.75, "r2") == "base" and strict.model_for("legal", 0.9, "r2") == "legal"
    p = tmp_path / "t.json"
    p.write_text(strict.to_json())
    back = RoutingTable.load(p)
    assert back.sure_mins == {"legal": 0.71} and back.sure_threshold("legal", "r1") == 0.71
    assert back.sure_threshold("legal", "r2") == 0.9
    assert back.stale_for("r1") is None and "fitted for router r1" in back.stale_for("r2")
    # no threshold keeps the cost in budget: no sure-only route
    none, _ = build_table(MATRIX, "base", ["legal", "math", "finance"], ["legal", "math", "finance", "general"],
                          ["general"], 0.02, fallback="general", set_probs={"general": general}, sure_cost=0.001)
    assert not none.sure and none.model_for("legal", 0.99) == "base"


def test_sure_thresholds_count_other_domains_prompts_against_the_model_that_serves_them():
    from deploy.sure_thresholds import fit_sure_thresholds

    clean = [{"general": 0.9, "legal": 0.1}] * 100
    # 2 of 100 math prompts look like legal at 0.8; every legal prompt does (its own set never counts against it)
    math = [{"math": 0.9, "legal": 0.1}] * 98 + [{"legal": 0.8, "math": 0.2}] * 2
    own = [{"legal": 0.99}] * 100
    probs = {"general": clean, "math": math, "legal": own}
    loss = {"legal": {"general": 0.0, "math": 0.5, "legal": 0.5}}
    assert fit_sure_thresholds({"legal": "legal"}, probs, loss, cost=0.005) == {"legal": 0.81}  # 2 % x 50 % > 0.5 %
    assert fit_sure_thresholds({"legal": "legal"}, {"general": clean, "legal": own}, loss, cost=0.005) == {"legal": 0.5}

    # in the audit's table the loss on math is measured against math's own model (the math adapter, 0.8), not the
    # base: legal's 1.1 there is 37.5 % worse (10 % vs the base), and 2 % of math prompts x 37.5 % > 0.5 %
    table, _ = build_table(MATRIX, "base", ["legal", "math", "finance"], ["legal", "math", "finance", "general"],
                           ["general"], 0.02, fallback="general", set_probs=probs, sure_cost=0.005, router_fp="r1")
    assert table.routes["math"] == "math" and table.sure == {"legal": "legal"}
    assert table.sure_mins == {"legal": 0.81}
    assert table.model_for("math", 0.9, "r1") == "math" and table.model_for("legal", 0.8, "r1") == "base"
    # measured against the base instead (math served by the base), 2 % x 10 % stays within 0.5 %: the bar stays 0.5
    flat = {m: {**row, "math": 1.0 if m != "legal" else 1.1} for m, row in MATRIX.items()}
    table, _ = build_table(flat, "base", ["legal", "math", "finance"], ["legal", "math", "finance", "general"],
                           ["general"], 0.02, fallback="general", set_probs=probs, sure_cost=0.005, router_fp="r1")
    assert table.routes["math"] == "base" and table.sure_mins == {"legal": 0.5}


def test_sure_thresholds_hold_the_budget_for_each_set_as_a_whole():
    """Two sure-only adapters that each cost the general set 0.4 % would cost it 0.8 % together: the budget is the
    set's, so one bar rises, the one whose own domain loses least by it."""
    from deploy.sure_thresholds import fit_sure_thresholds

    # 100 general prompts: 2 reach legal at 0.6, 2 reach medical at 0.7; each adapter loses 20 % on general
    general = [{"general": 0.9}] * 96 + [{"legal": 0.6, "general": 0.4}] * 2 + [{"medical": 0.7, "general": 0.3}] * 2
    loss = {"legal": {"general": 0.2}, "medical": {"general": 0.2}}
    sure = {"legal": "legal", "medical": "medical"}
    sure_legal = [{"legal": 0.99}] * 100
    unsure_legal = [{"legal": 0.55}] * 50 + [{"legal": 0.99}] * 50
    sure_medical = [{"medical": 0.99}] * 100
    unsure_medical = [{"medical": 0.65}] * 50 + [{"medical": 0.99}] * 50

    def spent(fitted):
        return sum(sum(1 for p in general if p.get(r, 0.0) >= t) / 100 * 0.2
                   for r, t in fitted.items() if t is not None)

    # alone, each fits at 0.5 (2 % x 20 % = 0.4 % <= 0.5 %)
    assert fit_sure_thresholds({"legal": "legal"}, {"general": general}, loss, 0.005) == {"legal": 0.5}
    assert fit_sure_thresholds({"medical": "medical"}, {"general": general}, loss, 0.005) == {"medical": 0.5}
    # together: medical's own prompts are all sure, so raising medical past 0.7 costs it nothing
    both = fit_sure_thresholds(sure, {"general": general, "legal": unsure_legal, "medical": sure_medical}, loss, 0.005)
    assert both == {"legal": 0.5, "medical": 0.71} and spent(both) <= 0.005
    # the other way round, legal gives up nothing by rising past 0.6, medical would lose half its domain
    both = fit_sure_thresholds(sure, {"general": general, "legal": sure_legal, "medical": unsure_medical}, loss, 0.005)
    assert both == {"legal": 0.61, "medical": 0.5} and spent(both) <= 0.005
    # a budget that fits both as they are changes nothing
    assert fit_sure_thresholds(sure, {"general": general}, loss, 0.008) == {"legal": 0.5, "medical": 0.5}
    # a floor is kept: a threshold never starts below it
    assert fit_sure_thresholds(sure, {"general": general}, loss, 0.008, floors={"legal": 0.9}) == \
        {"legal": 0.9, "medical": 0.5}
    # when no bar of either keeps the set in budget, both routes lose their sure-only adapter
    certain = [{"legal": 0.999}] * 10 + [{"medical": 0.999}] * 10 + [{"general": 1.0}] * 80
    assert fit_sure_thresholds(sure, {"general": certain}, loss, 0.005) == {"legal": None, "medical": None}


def test_adopting_a_better_model_raises_the_other_routes_sure_thresholds():
    """`audit --candidate`: once a better model serves math, a legal adapter that forgets costs math prompts more;
    legal's bar is re-checked on the math prompts and ends where an audit of the new table would have put it."""
    from deploy.sure_thresholds import refit_for_new_model

    general = [{"general": 0.9, "legal": 0.1}] * 100
    math = [{"math": 0.9, "legal": 0.1}] * 98 + [{"legal": 0.8, "math": 0.2}] * 2
    probs = {"general": general, "math": math, "legal": [{"legal": 0.99}] * 100}
    flat = {m: {**row, "math": 1.0 if m != "legal" else 1.1} for m, row in MATRIX.items()}
    table, _ = build_table(flat, "base", ["legal", "math", "finance"], ["legal", "math", "finance", "general"],
                           ["general"], 0.02, fallback="general", set_probs=probs, sure_cost=0.005, router_fp="r1")
    assert table.routes["math"] == "base" and table.sure_mins == {"legal": 0.5}  # legal costs math 10 % vs the base
    # a candidate 20 % better than the base on math is adopted (what deploy/candidate.py writes) ...
    table.routes["math"] = "math-v2"
    table.quality["math"]["math-v2"] = 0.2
    changes = refit_for_new_model(table, "math", math, cost=0.005)
    # ... against it legal's 1.1 is 37.5 % worse, and 2 % x 37.5 % > 0.5 %: the bar rises to 0.81, as in the audit
    # of the matrix where the math adapter (0.8) serves math
    assert changes == {"legal": {"adapter": "legal", "before": 0.5, "after": 0.81, "loss": 0.375, "share": 0.0,
                                 "prompts": 100}}
    assert table.sure == {"legal": "legal"} and table.sure_mins == {"legal": 0.81}
    assert table.model_for("legal", 0.8, "r1") == "base" and table.model_for("legal", 0.81, "r1") == "legal"
    # a bar only rises: with no math prompt near legal the fitted 0.81 stays
    assert refit_for_new_model(table, "math", [{"math": 1.0}] * 100, cost=0.005)["legal"]["after"] == 0.81
    # when a fifth of the math prompts are all but certain to be legal, no threshold is safe: the route goes
    lost = [{"legal": 0.995, "math": 0.005}] * 20 + [{"math": 1.0}] * 80
    assert refit_for_new_model(table, "math", lost, cost=0.005)["legal"]["after"] is None
    assert table.sure == {} and table.sure_mins == {} and table.model_for("legal", 0.999, "r1") == "base"

    # two sure-only routes whose adapters each fit math's budget alone but not together: one bar rises
    table.sure, table.sure_mins = {"legal": "legal", "finance": "finance"}, {"legal": 0.5, "finance": 0.5}
    table.quality["math"].update({"legal": -0.1, "finance": -0.1})  # each 37.5 % worse than math-v2
    near = [{"legal": 0.6, "math": 0.4}] + [{"finance": 0.7, "math": 0.3}] + [{"math": 1.0}] * 98
    changes = refit_for_new_model(table, "math", near, cost=0.005)  # 1 % x 37.5 % each, 0.75 % together
    assert changes["finance"]["after"] == 0.5 and changes["legal"]["after"] == 0.61
    assert table.sure_mins == {"legal": 0.61, "finance": 0.5}


def test_another_model_takes_a_route_only_when_it_wins_on_most_items():
    routes = ["legal", "finance", "general"]
    # finance's adapter beats the legal route's default (the base) by 10 % on average ...
    m = {"base": {"legal": 2.0, "finance": 2.0, "general": 2.0},
         "legal": {"legal": 2.1, "finance": 2.0, "general": 2.0},
         "finance": {"legal": 1.8, "finance": 1.5, "general": 2.0}}
    # ... but only through one item: on 7 of 8 it is worse
    lucky = {"base": {"legal": [2.0] * 8}, "legal": {"legal": [2.1] * 8},
             "finance": {"legal": [2.05] * 7 + [0.05]}}  # mean 1.8
    for m_ in lucky.values():
        m_.update({"finance": [1.5] * 8, "general": [2.0] * 8})
    table, _ = build_table(m, "base", ["legal", "finance"], routes, ["general"], 0.05, fallback="general", item_nlls=lucky)
    assert table.routes["legal"] == "base"
    # better on every item: it takes the route
    steady = {**lucky, "finance": {**lucky["finance"], "legal": [1.8] * 8}}
    table, _ = build_table(m, "base", ["legal", "finance"], routes, ["general"], 0.05, fallback="general", item_nlls=steady)
    assert table.routes["legal"] == "finance"
    # without per-item scores the mean decides (the earlier behaviour)
    table, _ = build_table(m, "base", ["legal", "finance"], routes, ["general"], 0.05, fallback="general")
    assert table.routes["legal"] == "finance"


def test_the_sign_test_level_is_shared_by_the_routes_of_the_table():
    """SWITCH_P holds for the whole table: with three contested routes a single route's test needs p <= 0.1 / 3."""
    m = {"base": {"legal": 2.0, "finance": 2.0, "general": 2.0},
         "legal": {"legal": 2.1, "finance": 2.0, "general": 2.0},
         "finance": {"legal": 1.8, "finance": 1.5, "general": 2.0}}
    items = {"base": {"legal": [2.0] * 8}, "legal": {"legal": [2.1] * 8},
             "finance": {"legal": [1.75] * 7 + [2.15]}}  # better on 7 of 8 legal items: one-sided p = 0.035
    for m_ in items.values():
        m_.update({"finance": [1.5] * 8, "general": [2.0] * 8})
    three, _ = build_table(m, "base", ["legal", "finance"], ["legal", "finance", "general"], ["general"], 0.05,
                           fallback="general", item_nlls=items)
    assert three.routes["legal"] == "base"  # 0.035 > 0.1 / 3
    one, _ = build_table(m, "base", ["legal", "finance"], ["legal"], ["general"], 0.05, fallback="general",
                         item_nlls=items)
    assert one.routes["legal"] == "finance"  # the only contested route: 0.035 <= 0.1
    # better on all 8 (p = 0.004) clears the shared level too
    items["finance"]["legal"] = [1.8] * 8
    three, _ = build_table(m, "base", ["legal", "finance"], ["legal", "finance", "general"], ["general"], 0.05,
                           fallback="general", item_nlls=items)
    assert three.routes["legal"] == "finance"


def test_candidate_judgement():
    m = {"base": {"math": 1.0, "general": 2.0}, "inc": {"math": 0.9, "general": 2.0},
         "good": {"math": 0.8, "general": 2.02}, "forgets": {"math": 0.7, "general": 2.5}, "weak": {"math": 0.95, "general": 2.0}}
    assert judge(m, "base", "inc", "good", "math", ["general"], 0.05)[0]
    ok, why = judge(m, "base", "inc", "forgets", "math", ["general"], 0.05)
    assert not ok and "forgets" in why and "+25.0%" in why
    ok, why = judge(m, "base", "inc", "weak", "math", ["general"], 0.05)
    assert not ok and "does not beat inc" in why
    assert parse_candidate("x=/a/b") == ("x", __import__("pathlib").Path("/a/b"))
    with pytest.raises(InputError, match="expected NAME=PATH"):
        parse_candidate("just-a-path")
