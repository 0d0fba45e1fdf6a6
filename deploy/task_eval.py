"""Greedy answers to task items, from vLLM or from transformers+peft, checked by deploy/task_metrics.py.

Both generators get the same token ids (the chat template applied to the item's prompt, cut from the left to
`PROMPT_TOKENS`, or less where the vLLM server's context is shorter), decode greedily for at most
`MAX_NEW_TOKENS`, and return text. The engines' arithmetic differs slightly (vLLM serves bf16 weights, peft
runs float32), which can flip a near-tied token, so each benchmark regime uses one engine throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from classifier.errors import InputError
from deploy.task_metrics import Task, check, task_of

PROMPT_TOKENS = 1536
MAX_NEW_TOKENS = 256


def prompt_ids(tok, row: dict, budget: int = PROMPT_TOKENS) -> list[int]:
    ids = list(tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=True, return_dict=False))
    return ids[-budget:]


class VllmGenerator:
    """Greedy completions through /v1/completions, several in flight so vLLM batches them."""

    def __init__(self, url: str, tok, headers: dict | None = None, workers: int = 6):
        import httpx

        self.url, self.tok, self.workers = url.rstrip("/"), tok, workers
        self.client = httpx.Client(timeout=900, headers=headers or {})
        self.budget = PROMPT_TOKENS
        try:  # prompt + answer must fit the server's context: vLLM reports it per model
            lens = [m.get("max_model_len") for m in self.client.get(f"{self.url}/v1/models").json()["data"]]
            self.budget = min(PROMPT_TOKENS, min(n for n in lens if n) - MAX_NEW_TOKENS)
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        if self.budget < 16:
            raise InputError(f"vLLM at {url}: context too short to answer task items ({self.budget + MAX_NEW_TOKENS} tokens)")

    def one(self, model: str, ids: list[int]) -> str:
        r = self.client.post(f"{self.url}/v1/completions", json={
            "model": model, "prompt": ids, "max_tokens": MAX_NEW_TOKENS, "temperature": 0})
        if r.status_code != 200:
            raise InputError(f"generating with model '{model}' failed: HTTP {r.status_code} {r.text[:200]}")
        doc = r.json()
        if doc.get("model") != model:  # a gateway may answer with the base when an adapter fails: not this model's score
            raise InputError(f"generating with model '{model}': answered by '{doc.get('model')}' instead")
        return doc["choices"][0]["text"]

    def __call__(self, model: str, rows: list[dict], progress: Callable[[], None] | None = None) -> list[str]:
        def go(row):
            out = self.one(model, prompt_ids(self.tok, row, self.budget))
            if progress:
                progress()
            return out

        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(go, rows))


class PeftGenerator:
    """Greedy generation with whatever model a PeftScorer currently holds (base or base + adapter)."""

    def __init__(self, scorer, tok, batch_size: int = 6):
        self.scorer, self.tok, self.batch_size = scorer, tok, batch_size

    def __call__(self, model: str, rows: list[dict], progress: Callable[[], None] | None = None) -> list[str]:
        torch = self.scorer.torch
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        out = []
        for i in range(0, len(rows), self.batch_size):
            batch = [prompt_ids(self.tok, r) for r in rows[i:i + self.batch_size]]
            width = max(map(len, batch))
            ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch])  # left padding: answers start aligned
            mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
            with torch.inference_mode():
                gen = self.scorer.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS,
                                                 do_sample=False, pad_token_id=pad)
            for row in gen[:, width:]:
                out.append(self.tok.decode(row, skip_special_tokens=True))
                if progress:
                    progress()
        return out


def task_items(rows: list[dict]) -> list[tuple[int, Task]]:
    """(index, task) for the rows that carry a checkable task."""
    return [(i, t) for i, r in enumerate(rows) if (t := task_of(r)) is not None]


def solve(generate, model: str, rows: list[dict], tasks: list[tuple[int, Task]], progress=None) -> dict[int, bool]:
    """Row index -> whether `model`'s greedy answer is right, for the rows in `tasks`."""
    outputs = generate(model, [rows[i] for i, _ in tasks], progress)
    return {i: check(t, o) for (i, t), o in zip(tasks, outputs)}


def summarise(results: dict[str, dict[str, dict[int, bool]]],
              tasks: dict[str, list[tuple[int, Task]]]) -> dict[str, dict[str, dict]]:
    """model -> column -> {"metric", "score", "n"} for the columns that have task items."""
    out: dict[str, dict[str, dict]] = {}
    for model, per_col in results.items():
        out[model] = {}
        for col, got in per_col.items():
            metrics = sorted({t.metric for _, t in tasks[col]})
            out[model][col] = {"metric": "+".join(metrics), "score": round(sum(got.values()) / len(got), 4), "n": len(got)}
    return out


def column_tasks(rows_by_column: dict[str, list[dict]], limit: int | None = None) -> dict[str, list[tuple[int, Task]]]:
    """Per column, its first `limit` checkable items (columns without any are left out)."""
    return {c: t[:limit] for c, rows in rows_by_column.items() if (t := task_items(rows)) and limit != 0}


def task_matrix(generate, models: list[str], rows_by_column: dict[str, list[dict]],
                tasks: dict[str, list[tuple[int, Task]]], progress=None) -> dict[str, dict[str, dict]]:
    """Every model's task score on every column in `tasks` (greedy decoding)."""
    results = {m: {c: solve(generate, m, rows_by_column[c], t, progress) for c, t in tasks.items()} for m in models}
    return summarise(results, tasks)


def vllm_task_scores(url: str, tok, models: list[str], rows_by_column: dict[str, list[dict]], limit: int, bar,
                     headers: dict | None = None) -> dict:
    """The audit's task scores: up to `limit` checkable items per column, answered by every model through vLLM,
    with a progress bar on `bar`; {} when no column has one (or `limit` is 0)."""
    tasks = column_tasks(rows_by_column, limit)
    n = sum(map(len, tasks.values()))
    if not n:
        return {}
    task = bar.add_task(f"greedy answers: {len(models)} models × {n} task items", total=n * len(models))
    return task_matrix(VllmGenerator(url, tok, headers), models, rows_by_column, tasks, progress=lambda: bar.advance(task))
