#!/usr/bin/env bash
# The example results the README points to, in one run (meant for one GPU):
#   a `short` search of the d2l preset, its report, the knee architecture exported, and the
#   d2l chapter's network trained for 10 epochs with the chapter's recipe and with ours.
# Usage: bash benchmarks/examples.sh OUTDIR
#   (TRIALS=30 BUDGET=short EPOCHS=10 by default; smaller values give a CPU dry run)
set -euo pipefail
out=${1:?usage: bash benchmarks/examples.sh OUTDIR}
trials=${TRIALS:-30} budget=${BUDGET:-short} epochs=${EPOCHS:-10}
py=${PYTHON:-python3}
mkdir -p "$out"
url="sqlite:///$(cd "$out" && pwd)/examples.db"
$py -m nas.search --study d2l-$budget --storage "$url" --trials "$trials" --budget "$budget" \
  --seed 0 2>&1 | tee "$out/search.log"
$py -m nas.report --study d2l-$budget --storage "$url" --out "$out/d2l-$budget.html" \
  --no-artifacts
$py -m nas.export --study d2l-$budget --storage "$url" --out "$out/knee.json" --pick knee
printf '%s\n' '{"growth_rate": 32, "convs_per_block": [4, 4, 4, 4], "compression": 0.5,
 "bottleneck": false, "stem": "d2l", "stem_channels": 64, "in_channels": 1,
 "image_size": 96, "num_classes": 10}' > "$out/d2l.json"
cp "$out/d2l.json" "$out/d2l-ours.json"
$py -m nas.train "$out/d2l.json" --epochs "$epochs" --recipe d2l --lr 0.1 --batch-size 256 \
  2>&1 | tee "$out/train-d2l-recipe.log"
$py -m nas.train "$out/d2l-ours.json" --epochs "$epochs" --recipe ours 2>&1 \
  | tee "$out/train-ours-recipe.log"
rm -f "$out"/*.pt  # checkpoints stay on the machine that made them
