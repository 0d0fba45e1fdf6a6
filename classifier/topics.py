"""What the router's zero-shot part compares a prompt with: a few short topic lines per route.

A route's zero-shot score is the prompt's similarity to its closest topic line, so a route can cover several
kinds of request ("fix a bug in my code" and "algorithms and data structures") without averaging them into one
vague sentence. Measured on held-out source families of the routing dev set (argmax macro-F1 of the head): one
description line per route 0.841, the topic lists below 0.871; the zero-shot part alone 0.68 → 0.79.

The fallback route's list is the widest: everything a general assistant is asked that no specialist owns. Its last
four lines (history to rewriting) were added in recipe 5; with the whole router, held-out source families:
macro-F1 0.871 → 0.876, fallback precision 0.770 → 0.782, recall 0.832 → 0.859; on prompts from sources the dev set
does not have (`bench routing`'s outside table) 0.896 → 0.920 correct. The same kind of extra lines for the five
domains (nutrition, insurance, shell commands, ...) lowered both held-out figures (0.865, fallback precision
0.749) by pulling general prompts into domains, so they were left out.

The six standard routes (the demo adapters' domains and the fallback) have built-in topics. A user's own lines
for a route replace them; a route with neither has no zero-shot lines, and then the zero-shot part is off.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from classifier.errors import InputError

BUILTIN_TOPICS: dict[str, list[str]] = {
    "legal": [
        "Contract clauses, agreements and their terms.",
        "Court cases, lawsuits, judges and trials.",
        "Laws, statutes and government regulations.",
        "Legal rights, liability, crimes and penalties.",
        "Property, wills, employment and family law.",
    ],
    "medical": [
        "Symptoms, diseases and diagnosis.",
        "Medicines, drug doses and treatment.",
        "Human anatomy and physiology.",
        "Clinical studies of patients and biomedical research.",
        "Genetics, cells and the biology of disease.",
    ],
    "code": [
        "Write a function or program.",
        "Fix a bug or an error in code.",
        "Algorithms and data structures.",
        "Computers, software, databases and networks.",
        "Programming in Python, JavaScript, SQL or C.",
    ],
    "math": [
        "Arithmetic word problems: how many, how much.",
        "Algebra: solve the equation.",
        "Geometry, calculus and probability.",
        "Numbers, proofs and mathematical reasoning.",
    ],
    "finance": [
        "Banking: accounts, cards, transfers, payments and fees.",
        "Accounting and financial statements.",
        "Investing, stocks, bonds and interest rates.",
        "Taxes, revenue, costs and company earnings.",
    ],
    "general": [
        "Everyday chat and small talk.",
        "General knowledge and trivia questions.",
        "Writing help: emails, stories, poems.",
        "Personal assistant requests: reminders, weather, travel, cooking.",
        "Opinions, advice and recommendations.",
        "History, geography, culture and famous people.",
        "Science and nature facts for curious people.",
        "Movies, music, books, sports and games.",
        "Translate, summarise or rewrite a text.",
    ],
}

Topics = dict[str, list[str]]


def as_lines(value: object, where: str) -> list[str]:
    """One route's entry: a line or a list of lines; blank lines dropped."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: expected a line of text or a list of lines")
    return [v.strip() for v in value if v.strip()]


def resolve_topics(labels: Sequence[str], given: Mapping[str, Sequence[str]] | None, builtin: bool = True,
                   fallback: Mapping[str, Sequence[str]] | None = None,
                   required: bool | None = None) -> tuple[Topics | None, str]:
    """The topic lines for every route, and a one-line account of where they came from.

    Per route: `given` lines (route -> lines, from the user) first, then the built-in topics of a standard route
    name (when `builtin`), then `fallback` lines (an adapter's one-line description, say). A zero-shot vote among
    some routes only would pull every prompt towards those, so when some route has no lines at all the answer is
    None, or an error when `required` (default: when the user gave lines, i.e. meant to switch it on)."""
    given = {k: list(v) for k, v in (given or {}).items() if v}
    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise InputError(f"route descriptions name routes without training examples: {', '.join(unknown)}")
    tiers = [("yours", given), ("built-in", BUILTIN_TOPICS if builtin else {}),
             ("description", {k: list(v) for k, v in (fallback or {}).items() if v})]
    topics, sources = {}, {name: [] for name, _ in tiers}
    for lab in labels:
        name, lines = next(((name, tier[lab]) for name, tier in tiers if lab in tier), (None, None))
        if name:
            topics[lab] = lines
            sources[name].append(lab)
    missing = [lab for lab in labels if lab not in topics]
    if missing and (bool(given) if required is None else required):
        raise InputError(f"route descriptions must cover every route; missing: {', '.join(missing)}")
    if missing:
        return None, (f"routes without topics or a description ({', '.join(missing)}): "
                      "training without the zero-shot signal")
    said = "; ".join(f"{k}: {', '.join(v)}" for k, v in sources.items() if v)
    return topics, f"zero-shot topics ({said})"
