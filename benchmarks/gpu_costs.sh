#!/usr/bin/env bash
# The GPU checks and figures issues 11 and 12 still need, as one run on a lent GPU
# (about 8 minutes on an H200; each step writes under OUTDIR as it finishes):
#   1. the CUDA tests: K trials at once give the same numbers as one at a time with
#      graphs captured beside replays; GPU latency/throughput; bit-identical graph steps;
#   2. a `short` cifar search of accuracy vs GPU latency and training memory, one trial
#      at a time (GPU latency is timed with the GPU to one trial), its report, and the
#      rank correlation of GPU latency, training memory and CPU latency with MACs;
#   3. (c) of benchmarks/throughput.py for the cifar preset: K=1 vs K=4 (the candidate).
# Usage: bash benchmarks/gpu_costs.sh OUTDIR   (TRIALS=20 by default)
# On the lent machine: NAS_DATA_DIR=.data/fashion-mnist, PYTHONPATH as in
# ../shared/device/README.md.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_costs.sh OUTDIR}
trials=${TRIALS:-20}
py=${PYTHON:-python3}
mkdir -p "$out"
url="sqlite:///$(cd "$out" && pwd)/gpu-costs.db"

$py -m pytest -q -p no:cacheprovider tests/test_step.py tests/test_concurrent.py \
  tests/test_measure.py 2>&1 | tail -5 | tee "$out/cuda-tests.log"

$py -m nas.search --study gpu-costs --storage "$url" --preset cifar --budget short \
  --trials "$trials" --sampler random --seed 0 --concurrency 1 \
  --objectives accuracy,latency-gpu,memory 2>&1 | tee "$out/search-gpu-costs.log"
$py -m nas.report --study gpu-costs --storage "$url" --out "$out/gpu-costs.html" \
  --no-artifacts --format csv
$py - "$url" <<'EOF' | tee "$out/rank-agreement.txt"
import sys
import optuna
from nas.report import rank_agreement, trials_frame
df = trials_frame(optuna.load_study(study_name="gpu-costs", storage=sys.argv[1]))
for col in ("GPU latency (ms)", "train memory (MB)", "CPU latency (ms)"):
    n, rho, tau = rank_agreement(df, col)
    print(f"{col} vs MACs (fvcore): Spearman rho {rho:.2f}, Kendall tau {tau:.2f}, {n} networks")
EOF

$py benchmarks/throughput.py --parts c --presets cifar --trials "$trials" \
  --results "$out/throughput.jsonl" --out "$out/throughput.json" 2>&1 \
  | grep -v '^trial ' | tee "$out/throughput.log"
