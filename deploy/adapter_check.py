"""Static checks of a LoRA adapter directory before vLLM is asked to load it.

vLLM's own messages for these cases are long tracebacks in its log; these checks turn them into one line:
missing files, a rank above --max-lora-rank, or weights shaped for another base model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from classifier.errors import InputError

_LAYER = re.compile(r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_([AB])\.weight$")


def module_shapes(base_config: dict) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each LoRA-able linear layer of a Llama-style base model."""
    h = base_config["hidden_size"]
    inter = base_config.get("intermediate_size", 4 * h)
    heads = base_config["num_attention_heads"]
    kv = base_config.get("num_key_value_heads", heads)
    head_dim = base_config.get("head_dim", h // heads)
    return {
        "q_proj": (h, heads * head_dim), "k_proj": (h, kv * head_dim), "v_proj": (h, kv * head_dim),
        "o_proj": (heads * head_dim, h), "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
    }


def check_adapter(path: Path, base_dir: Path | None, max_rank: int) -> dict:
    """Return the adapter's config after checking it fits the base and the rank limit; raise InputError otherwise."""
    path = Path(path)
    cfg_path = path / "adapter_config.json"
    if not path.is_dir():
        raise InputError(f"{path}: adapter directory not found")
    if not cfg_path.is_file():
        raise InputError(f"{path}: not a peft adapter (no adapter_config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
        rank = int(cfg["r"])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{cfg_path}: unreadable adapter config (needs an integer 'r')") from None
    if rank > max_rank:
        raise InputError(f"{path}: LoRA rank {rank} is above the configured max_lora_rank {max_rank} (vllm.max_lora_rank)")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{path}: no adapter_model.safetensors")
    if base_dir is None or not (Path(base_dir) / "config.json").is_file():
        return cfg
    from safetensors import safe_open

    shapes = module_shapes(json.loads((Path(base_dir) / "config.json").read_text()))
    try:
        with safe_open(str(weights), framework="numpy") as f:
            for key in f.keys():
                m = _LAYER.search(key)
                if not m:
                    continue
                mod, ab = m.groups()
                got = tuple(f.get_slice(key).get_shape())
                want_in, want_out = shapes[mod]
                ok = got[1] == want_in if ab == "A" else got[0] == want_out
                if not ok:
                    raise InputError(
                        f"{path}: weights are for another base model ({key} has shape {list(got)}, "
                        f"{Path(base_dir).name} needs {'in' if ab == 'A' else 'out'}_features "
                        f"{want_in if ab == 'A' else want_out})"
                    )
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{weights}: unreadable safetensors ({type(exc).__name__})") from None
    return cfg
