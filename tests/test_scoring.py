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


def test_peft_scorer_merges_each_adapter_and_restores_the_base_between_them(base_dir, tmp_path):
    """The forgetting benchmark's in-process scorer merges an adapter into the weights while it is in use: its NLL
    must be the unmerged peft model's, and switching adapters (or back to the base) must leave nothing of the
    previous one behind."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deploy.scoring import PeftScorer, make_item

    # an adapter of the aggressive kind (every linear layer), with weights far from zero so a leftover would show
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM", target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-2)
    wide = tmp_path / "wide"
    lora.save_pretrained(str(wide))
    tok = AutoTokenizer.from_pretrained(str(base_dir))
    item = make_item(tok, {"messages": [{"role": "user", "content": "What is 12 times 7? Show the steps."},
                                        {"role": "assistant", "content": "12 times 7 is 10 times 7 plus 2 times 7: "
                                                                         "70 + 14 = 84. The answer is 84."}]})
    scorer = PeftScorer(base_dir)
    base_total, n = scorer.nll(item)
    got = {}
    for adapter in [wide, REPO / "deploy" / "adapters" / "math", None, wide]:
        scorer.use(adapter)
        total, n2 = scorer.nll(item)
        assert n2 == n
        got.setdefault(adapter, []).append(total / n)
        ref = _reference_nll(base_dir, adapter, item)
        assert abs(total / n - ref) < 1e-4, (adapter, total / n, ref)
    assert abs(got[wide][0] - base_total / n) > 0.01  # the adapter changes the scores: the check above has teeth
    assert got[None] == [base_total / n]  # back to the base: bit for bit the base's weights
    assert got[wide][0] == got[wide][1]  # the same adapter a second time, after two others: the same merge
