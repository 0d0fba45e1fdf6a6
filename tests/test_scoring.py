"""The NLL the audit and the forgetting benchmark read from vLLM (prompt_logprobs) agrees with transformers+peft."""

from __future__ import annotations

import json

import pytest
from conftest import REPO


def _reference_nll(base_dir, adapter_dir, item) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    ids = torch.tensor([item.full_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    start = len(item.prompt_ids)
    targets = ids[0, start:]
    return float(-logp[start - 1:-1].gather(1, targets[:, None]).sum() / len(targets))


@pytest.mark.parametrize("model", ["smollm2", "math"])
def test_vllm_nll_matches_transformers_and_peft(vllm, shared, base_dir, model):
    from deploy.scoring import NllScorer

    row = json.loads((shared / "adapters" / "math" / "eval.jsonl").read_text().splitlines()[0])
    scorer = NllScorer(vllm.url, base_dir)
    item = scorer.item(row)
    total, n = scorer.nll(model, item)
    assert n == len(item.full_ids) - len(item.prompt_ids) > 10
    ref = _reference_nll(base_dir, None if model == "smollm2" else REPO / "deploy" / "adapters" / model, item)
    # vLLM serves the bf16 checkpoint in bf16; the reference runs the same weights in float32
    assert abs(total / n - ref) / ref < 0.03, (total / n, ref)
