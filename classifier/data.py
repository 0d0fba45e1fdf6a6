"""Labelled JSONL loading with strict validation: `{"text": ..., "label": ..., "source": ...}` per line."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from classifier.errors import InputError


@dataclass
class Examples:
    texts: list[str]
    labels: list[str]
    sources: list[str | None] = field(default_factory=list)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def label_set(self) -> list[str]:
        return sorted(set(self.labels))


#: a \u escape of a UTF-16 surrogate in JSON text; only such an escape can put a lone surrogate into a string
ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate(obj, path: str = "") -> str | None:
    """Where (e.g. `messages[0].content`) a parsed JSON value holds a string with a lone UTF-16 surrogate, or
    None. JSON's \\ud800 escapes allow such strings, but they are not text: UTF-8 cannot encode them and
    tokenizers refuse them. A pair of escapes that makes one character (an emoji) is fine."""
    if isinstance(obj, str):
        if obj.isascii():
            return None
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return path or "(value)"
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        here = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
        if isinstance(key, str) and lone_surrogate(key) is not None:
            return here
        if (found := lone_surrogate(value, here)) is not None:
            return found
    return None


def surrogate_field(obj) -> str | None:
    """`lone_surrogate` for an error line: a path of at most 100 characters; a structure nested too deeply
    to walk counts as having one (it was only walked because its text holds a surrogate escape)."""
    try:
        where = lone_surrogate(obj)
    except RecursionError:
        return "(nested too deeply to check)"
    return where if where is None or len(where) <= 100 else f"{where[:97]}..."


def _field(obj: dict, key: str, where: str, required: bool) -> str | None:
    if key not in obj:
        if required:
            raise InputError(f"{where}: missing field '{key}'")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: field '{key}' is blank")
    return value


def read_jsonl(path: str | Path) -> tuple[list[tuple[int, dict]], str]:
    """Parse a JSONL file into (line number, object) pairs plus the file's sha256; blank lines are skipped."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a JSONL file")
    raw = p.read_bytes()
    rows: list[tuple[int, dict]] = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{p}:{lineno}: not valid UTF-8 (byte {exc.start})") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise InputError(f"{p}:{lineno}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise InputError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        if ESCAPED_SURROGATE.search(line) and (bad := surrogate_field(obj)) is not None:
            raise InputError(f"{p}:{lineno}: field '{bad}' is not valid Unicode (a lone surrogate in a \\u escape)")
        rows.append((lineno, obj))
    if not rows:
        raise InputError(f"{p}: file is empty")
    return rows, hashlib.sha256(raw).hexdigest()


def load_examples(path: str | Path, *, require_label: bool = True) -> Examples:
    rows, digest = read_jsonl(path)
    texts, labels, sources = [], [], []
    for lineno, obj in rows:
        where = f"{path}:{lineno}"
        texts.append(_field(obj, "text", where, True))
        label = _field(obj, "label", where, require_label)
        labels.append(label.strip() if label else "")
        sources.append(_field(obj, "source", where, False))
    return Examples(texts, labels, sources, digest)


def load_training_examples(path: str | Path, fallback: str) -> Examples:
    ex = load_examples(path)
    if len(ex.label_set) < 2:
        raise InputError(f"{path}: needs at least two labels to route between, found only {ex.label_set!r}")
    if fallback not in ex.label_set:
        raise InputError(
            f"{path}: fallback route '{fallback}' has no examples (labels: {', '.join(ex.label_set)}); "
            "add examples for it or pass --fallback"
        )
    return ex


def source_family(source: str | None) -> str | None:
    """Group key for held-out validation: whole dataset families, not rows.

    `clinc150/train:home` -> `clinc150/train`, `legalbench/cuad_audit_rights` -> `legalbench/cuad`,
    `mmlu/professional_law` -> `mmlu/professional`. Holding out a family removes every near-duplicate of
    its prompts from training, which is what a router meets on prompts from sources it never saw.
    """
    if not source:
        return None
    s = source.split(":", 1)[0]
    dataset, _, subset = s.partition("/")
    return f"{dataset}/{subset.split('_', 1)[0]}" if subset else dataset


def read_yaml(path: Path):
    """Parse a YAML (or JSON) file strictly: UTF-8, no key given twice in one mapping (plain YAML keeps the last
    one silently), no string with a lone surrogate. Errors are one line naming the file and line."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: the base class merges it
                    continue
                try:
                    key = self.construct_object(key_node, deep=True)
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(problem=f"key {key!r} given twice",
                                                            problem_mark=key_node.start_mark)
            return super().construct_mapping(node, deep)

    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise InputError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if (bad := surrogate_field(doc)) is not None:
        raise InputError(f"{path}: {bad}: not valid Unicode (a lone surrogate in a \\u escape)")
    return doc


def load_descriptions(path: str | Path) -> dict[str, list[str]]:
    """A YAML (or JSON) mapping of route name to a description line or a list of topic lines."""
    from classifier.topics import as_lines

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    doc = read_yaml(p)
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise InputError(f"{p}: expected a mapping of route name to a line or a list of lines")
    return {k: as_lines(v, f"{p}: route {k!r}") for k, v in doc.items()}
