#!/usr/bin/env bash
# Recipe for the five demo adapters committed in this directory (run from the repo root, needs ../shared).
# Light regime: LoRA r=8 on q_proj/v_proj, lr 5e-4, batch 4, 100 steps, seed 0, on the SmolLM2-135M-Instruct base.
# They were trained before `--truncate prompt` became the default: chats longer than 256 tokens lost their end
# (793 of the 1,600 legal and 1,280 of the 1,600 finance chats had no answer left and were skipped), hence
# `--truncate end` to rebuild these very adapters.
set -euo pipefail
for d in legal medical code math finance; do
  .venv/bin/forgetless adapters train --data ../shared/data/adapters/$d/train.jsonl --out deploy/adapters/$d \
    --steps 100 --rank 8 --lr 5e-4 --batch-size 4 --target q_proj,v_proj --seed 0 \
    --max-length 256 --truncate end
done
