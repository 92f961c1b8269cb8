#!/usr/bin/env bash
# Everything a lent GPU should run, most important first, in one call of at most ~9
# minutes on an H200 (DEADLINE seconds, 510 by default; a part that would start after it
# is skipped, a part that runs past it is stopped). Each part writes under OUT as it
# finishes, and the benchmarks resume from their JSON lines, so a second call with the
# same OUT carries on where the first stopped.
#   1. nas.doctor: environment, graph step vs eager, 40 trials at K=2 (streams, memory),
#      a 2-step run, the d2l network's GPU latency, graph vs eager images/s;
#   2. the CUDA tests (step, concurrency, measured costs, doctor);
#   3. throughput (c) for cifar: K=1 vs K=4 (the candidate), the same architectures;
#   4. a `short` cifar search of accuracy vs GPU latency and training memory, one trial at
#      a time, its report, and the rank agreement of the measured costs with MACs;
#   5. throughput (c) for d2l: K=1 vs K=4;
#   6. the fidelity benchmark for cifar, as far as the time left allows.
# Usage: bash benchmarks/gpu_all.sh OUT [--cpu]
#   --cpu: the same parts at their CPU smoke sizes (doctor --device cpu, --tiny runs),
#   to try the script where no GPU is at hand.
# On the lent machine: NAS_DATA_DIR=.data/fashion-mnist and PYTHONPATH as in
# ../shared/device/README.md; PYTHON=python3 by default.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_all.sh OUT [--cpu]}
cpu=${2:-}
py=${PYTHON:-python3}
deadline=$(( $(date +%s) + ${DEADLINE:-510} ))
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu_all.log"

left() { echo $(( deadline - $(date +%s) )); }
part() {  # part NAME MIN_SECONDS COMMAND...: run if MIN_SECONDS remain, stopped at the deadline
  local name=$1 need=$2; shift 2
  if [ "$(left)" -lt "$need" ]; then
    echo "== $name: skipped, $(left) s left (needs $need)" | tee -a "$log"
    return
  fi
  echo "== $name ($(left) s left)" | tee -a "$log"
  local t0; t0=$(date +%s)
  timeout --signal=TERM --kill-after=20 "$(left)" "$@" 2>&1 | tee "$out/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]} after $(( $(date +%s) - t0 )) s" | tee -a "$log"
}

if [ "$cpu" = "--cpu" ]; then
  device=cpu; tiny=(--tiny); trials=4
  costs=(--preset tiny --objectives accuracy,latency-cpu --budget smoke)
else
  device=cuda; tiny=(); trials=16; costs=(--objectives accuracy,latency-gpu,memory --budget short)
fi
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" | tee -a "$log"

part doctor 60 $py -m nas.doctor --device "$device"

part cuda-tests 90 $py -m pytest -q -p no:cacheprovider tests/test_step.py tests/test_gpu.py \
  tests/test_concurrent.py tests/test_measure.py tests/test_doctor.py tests/test_fit.py

part throughput-cifar 120 $py benchmarks/throughput.py --parts c --presets cifar \
  --trials "$trials" --concurrency 1,4 --device "$device" "${tiny[@]}" \
  --results "$out/throughput.jsonl" --out "$out/throughput-cifar.json"

url="sqlite:///$out/gpu-costs.db"
part costs-search 90 $py -m nas.search --study gpu-costs --storage "$url" --preset cifar \
  --trials "$trials" --sampler random --seed 0 --concurrency 1 --device "$device" "${costs[@]}"
part costs-report 20 $py - "$url" "$out" <<'EOF'
import sys
import optuna
from nas.report import main, rank_agreement, trials_frame
url, out = sys.argv[1:]
main(["--study", "gpu-costs", "--storage", url, "--out", f"{out}/gpu-costs.html",
      "--no-artifacts", "--format", "csv"])
df = trials_frame(optuna.load_study(study_name="gpu-costs", storage=url))
for col in ("GPU latency (ms)", "train memory (MB)", "CPU latency (ms)"):
    if col in df:
        n, rho, tau = rank_agreement(df, col)
        print(f"{col} vs MACs (fvcore): Spearman rho {rho:.2f}, Kendall tau {tau:.2f}, {n} networks")
EOF

part throughput-d2l 120 $py benchmarks/throughput.py --parts c --presets d2l \
  --trials "$trials" --concurrency 1,4 --device "$device" "${tiny[@]}" \
  --results "$out/throughput.jsonl" --out "$out/throughput-d2l.json"

part fidelity-cifar 60 $py benchmarks/fidelity.py --preset cifar --device "$device" "${tiny[@]}" \
  --results "$out/fidelity-cifar.jsonl" --out "$out/fidelity-cifar.json"

echo "== done, $(left) s before the deadline; results in $out" | tee -a "$log"
grep -h "^PASS\|^FAIL\|checks passed" "$out/doctor.log" 2>/dev/null
tail -n 1 "$out/cuda-tests.log" 2>/dev/null
