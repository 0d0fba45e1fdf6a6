"""`forgetless adapters train`: a peft LoRA adapter from chat-format JSONL, loss on assistant tokens only.

Deterministic for a given seed and data; resumable (a checkpoint with optimizer and RNG state is written
every --save-every steps and picked up by the next run with the same --out); writes a standard peft adapter
directory that vLLM loads with --lora-modules, plus `train_log.jsonl` (loss per step) and `recipe.json`.

A chat longer than --max-length is cut so that its answer survives (`--truncate prompt`, the default): the
prompt loses its start, and an answer longer than half the window keeps half a window of prompt before it.
Cutting the end instead (`--truncate end`, how the demo adapters and both benchmark regimes were trained) loses
every answer that follows a long prompt: at 256 tokens, 793 of the 1,600 legal and 1,280 of the 1,600 finance
training chats of the shared data have no answer token left and are skipped.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from classifier.data import read_jsonl
from classifier.errors import InputError

ROLES = {"system", "user", "assistant"}
CHECKPOINT = "checkpoint.pt"
TRUNCATE = ("prompt", "end")


@dataclass
class Recipe:
    steps: int = 150
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    lr: float = 5e-4
    batch_size: int = 4
    max_length: int = 256
    seed: int = 0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    save_every: int = 25
    truncate: str = "prompt"  # what a chat longer than max_length loses: its prompt's start, or its end

    def command(self, base: str, data: Path, out: Path) -> str:
        """The `forgetless adapters train` command that reproduces this recipe."""
        mods = ",".join(self.target_modules)
        return (f"forgetless adapters train --base {base} --data {data} --out {out} --steps {self.steps} "
                f"--rank {self.rank} --alpha {self.alpha} --lr {self.lr} --batch-size {self.batch_size} "
                f"--max-length {self.max_length} --target {mods} --seed {self.seed} --truncate {self.truncate}")


def load_chats(path: Path) -> list[list[dict]]:
    rows, _ = read_jsonl(path)
    chats = []
    for lineno, obj in rows:
        where = f"{path}:{lineno}"
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise InputError(f"{where}: field 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise InputError(f"{where}: messages[{i}] needs a role in {sorted(ROLES)} and string content")
        if not any(m["role"] == "assistant" for m in msgs):
            raise InputError(f"{where}: no assistant message to learn from")
        chats.append(msgs)
    return chats


def chat_tokens(tok, msgs: list[dict]) -> tuple[list[int], list[int], int]:
    """Token ids of the whole chat, labels that are -100 everywhere but assistant replies, and where the last
    reply starts."""
    ids: list[int] = []
    labels: list[int] = []
    answer = 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(msgs[:i], add_generation_prompt=True, tokenize=True, return_dict=False)
        full = tok.apply_chat_template(msgs[: i + 1], tokenize=True, return_dict=False)
        prompt, full = list(prompt), list(full)
        labels.extend([-100] * (len(prompt) - len(ids)))
        labels.extend(full[len(prompt):])
        ids, answer = full, len(prompt)
    return ids, labels, answer


def tokenize_chat(tok, msgs: list[dict], max_length: int, truncate: str = "prompt") -> tuple[list[int], list[int], bool]:
    """`chat_tokens` cut to at most `max_length` tokens (see `window` for what a longer chat loses), and whether
    it was cut."""
    ids, labels, answer = chat_tokens(tok, msgs)
    start = window(len(ids), answer, max_length, truncate)
    return ids[start:start + max_length], labels[start:start + max_length], len(ids) > max_length


def window(n: int, answer: int, max_length: int, truncate: str) -> int:
    """Where a `max_length` window of an `n`-token chat whose last answer starts at `answer` begins.

    "end": at 0 (the chat's end is cut). "prompt": as late as keeps the whole answer, but no later than half a
    window before the answer, so a long answer still has a prompt to follow."""
    if n <= max_length or truncate == "end":
        return 0
    return max(0, min(n - max_length, answer - max_length // 2))


def check_targets(targets: list[str], model, base: Path) -> None:
    """--target names linear layers of the base model (peft's own error is a traceback)."""
    import torch

    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and name != "lm_head"})
    unknown = [t for t in targets if t not in linear]
    choices = f"{', '.join(linear)}, or all-linear"
    if not targets:
        raise InputError(f"--target: no module given (linear layers of {base}: {choices})")
    if unknown:
        raise InputError(f"--target: {', '.join(unknown)}: not a linear layer of {base} (choose from {choices})")


def train(base: Path, data: Path, out: Path, recipe: Recipe, log=print) -> Path:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from classifier.progress import LoggedProgress

    if not (Path(base) / "config.json").is_file():
        raise InputError(f"{base}: not a model directory (no config.json); build it with `forgetless base build`")
    if recipe.truncate not in TRUNCATE:
        raise InputError(f"--truncate '{recipe.truncate}': expected one of {', '.join(TRUNCATE)}")
    chats = load_chats(Path(data))
    random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    tok = AutoTokenizer.from_pretrained(str(base))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tokenized = [tokenize_chat(tok, c, recipe.max_length, recipe.truncate) for c in chats]
    cut = sum(was_cut for _, _, was_cut in tokenized)
    examples = [(ids, labels) for ids, labels, _ in tokenized if any(t != -100 for t in labels)]
    if not examples:
        raise InputError(f"{data}: every assistant reply was cut off by --max-length {recipe.max_length} "
                         f"(--truncate {recipe.truncate})")
    if cut or len(examples) < len(chats):
        skipped = len(chats) - len(examples)
        log(f"{data}: {cut} of {len(chats)} chats cut to --max-length {recipe.max_length} "
            f"(--truncate {recipe.truncate})" + (f"; {skipped} skipped (no answer token left)" if skipped else ""))

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    check_targets(recipe.target_modules, model, base)
    out.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, lora_dropout=recipe.dropout,
                        target_modules=recipe.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / recipe.steps))

    # fixed, seed-determined order of examples: one permutation per epoch
    order_rng = np.random.default_rng(recipe.seed)
    order: list[int] = []
    while len(order) < recipe.steps * recipe.batch_size:
        order.extend(order_rng.permutation(len(examples)).tolist())

    start = 0
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["recipe"] != asdict(recipe) or state["data"] != str(data):
            raise InputError(f"{ckpt}: checkpoint was made with another recipe or data; use a new --out or delete it")
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
        log(f"resuming from step {start}")
    log_path = out / "train_log.jsonl"
    if start == 0 and log_path.exists():
        log_path.unlink()
    model.train()
    cols = [TextColumn("[bold]{task.description}[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn()]
    with LoggedProgress(*cols) as bar, log_path.open("a") as flog:
        task = bar.add_task(f"train {out.name}", total=recipe.steps, completed=start, loss=float("nan"))
        for step in range(start, recipe.steps):
            batch = [examples[i] for i in order[step * recipe.batch_size:(step + 1) * recipe.batch_size]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            attn = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
            loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            flog.write(json.dumps({"step": step + 1, "loss": round(loss.item(), 5), "lr": sched.get_last_lr()[0]}) + "\n")
            flog.flush()
            bar.update(task, advance=1, loss=loss.item())
            if (step + 1) % recipe.save_every == 0 and step + 1 < recipe.steps:
                trainable = {k: v for k, v in model.state_dict().items() if "lora_" in k}
                torch.save({"model": trainable, "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "rng": torch.get_rng_state(), "step": step + 1, "recipe": asdict(recipe),
                            "data": str(data)}, ckpt.with_suffix(".tmp"))
                ckpt.with_suffix(".tmp").replace(ckpt)
    model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    (out / "recipe.json").write_text(json.dumps({
        **asdict(recipe), "base": str(base), "data": str(data), "examples": len(examples),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": recipe.command("BASE", data, out),
    }, indent=2) + "\n")
    ckpt.unlink(missing_ok=True)
    return out
