"""A second test set for `forgetless bench routing`: prompts from sources the routing data does not have.

Leave-one-family-out on dev.jsonl holds out a family but trains on its siblings' topics; these prompts come
from the adapter data (../shared/data/adapters, chat format) and are kept only when their source is new to the
routing data: a dataset it lacks (dolly15k, oasst1), or a subject/task group it lacks inside the multi-subject
collections (mmlu/nutrition, mmlu/virology, legalbench/maud, ...). Every method is trained on all of the routing
data and decides each prompt once; the route is the adapter data's directory name (`general` for chat.jsonl).
"""

from __future__ import annotations

from pathlib import Path

from classifier.data import Examples, read_jsonl
from classifier.errors import InputError

#: collections whose subsets are topics (a subject, a task group), not splits of one topic
MULTI_SUBJECT = ("mmlu", "legalbench")
#: files of a route directory whose user turns are prompts (general/text.jsonl is prose, not prompts)
PROMPT_FILES = ("train.jsonl", "eval.jsonl", "chat.jsonl")


def topic_key(source: str | None) -> str | None:
    """`gsm8k/test` -> `gsm8k`, `mmlu/nutrition` -> `mmlu/nutrition`, `legalbench/maud_deal_type` ->
    `legalbench/maud`, `clinc150/train:home` -> `clinc150`."""
    if not source:
        return None
    dataset, _, subset = source.split(":", 1)[0].partition("/")
    if dataset in MULTI_SUBJECT and subset:
        return f"{dataset}/{subset.split('_', 1)[0] if dataset == 'legalbench' else subset}"
    return dataset


def _prompt(obj: dict, where: str) -> str:
    """What the router reads of a chat row (its last user message, as the audit and bench forgetting read it)."""
    from deploy.sure_thresholds import routing_text

    if not isinstance(obj.get("messages"), list):
        raise InputError(f"{where}: expected a 'messages' list")
    text = routing_text(obj)
    if not text.strip():
        raise InputError(f"{where}: no user message with text")
    return text


def load_outside(root: Path, known_sources: list[str | None]) -> Examples:
    """Prompts under `root/<route>/` whose topic the routing data lacks, labelled by route directory."""
    if not root.is_dir():
        raise InputError(f"{root}: no such directory (expected <route>/train.jsonl, eval.jsonl or chat.jsonl)")
    known = {topic_key(s) for s in known_sources}
    texts, labels, sources = [], [], []
    for route_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for name in PROMPT_FILES:
            path = route_dir / name
            if not path.is_file():
                continue
            rows, _ = read_jsonl(path)
            for lineno, obj in rows:
                where = f"{path}:{lineno}"
                source = obj.get("source")
                if not isinstance(source, str) or not source.strip():
                    raise InputError(f"{where}: missing or blank field 'source'")
                if topic_key(source) in known:
                    continue
                texts.append(_prompt(obj, where))
                labels.append(route_dir.name)
                sources.append(source)
    if not texts:
        raise InputError(f"{root}: no prompts from sources the routing data lacks")
    return Examples(texts, labels, sources)
