#!/usr/bin/env bash
# Recipe for the five demo adapters committed in this directory (run from the repo root, needs ../shared).
# Light regime: LoRA r=8 on q_proj/v_proj, lr 5e-4, batch 4, 100 steps, seed 0, on the SmolLM2-135M-Instruct base.
set -euo pipefail
for d in legal medical code math finance; do
  .venv/bin/forgetless adapters train --data ../shared/data/adapters/$d/train.jsonl --out deploy/adapters/$d \
    --steps 100 --rank 8 --lr 5e-4 --batch-size 4 --target q_proj,v_proj --seed 0
done
