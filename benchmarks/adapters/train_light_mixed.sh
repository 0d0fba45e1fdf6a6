#!/usr/bin/env bash
# Recipe for benchmarks/adapters/light-mixed: the `mixed` row of the light regime in `forgetless bench forgetting`.
# One LoRA on the union of the five domains' training sets (legal, medical, code, math, finance, in that order;
# the trainer shuffles by seed) with the same total budget as the five demo adapters together:
# r=8 on q_proj/v_proj, lr 5e-4, batch 4, 5 x 100 = 500 steps, max length 256, seed 0. Run from the repo root.
set -euo pipefail
data=~/.cache/forgetless/bench/data/mixed-train.jsonl
mkdir -p "$(dirname "$data")"
for d in legal medical code math finance; do cat ../shared/data/adapters/$d/train.jsonl; done > "$data"
.venv/bin/forgetless adapters train --data "$data" --out benchmarks/adapters/light-mixed \
  --steps 500 --rank 8 --lr 5e-4 --batch-size 4 --target q_proj,v_proj --seed 0
