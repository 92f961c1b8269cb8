#!/usr/bin/env bash
# Everything a lent GPU should run, most important first, in one call of at most ~9
# minutes on an H200 (DEADLINE seconds, 510 by default; a part that would start after it
# is skipped, a part that runs past it is stopped):
#   1. nas.doctor: environment, graph step vs eager, 40 trials at K=2 (streams, memory,
#      whether replays wait for captures on this PyTorch), a 2-step run, the d2l
#      network's GPU latency, graph vs eager images/s;
#   2. the CUDA tests (`-m cuda`: step, concurrency, measured costs, doctor);
#   3. throughput (c) for cifar: K=1 vs K=4 (the candidate), the same architectures, each
#      search in a fresh process, K in alternating order after one warm-up, median of 2;
#   4. the same for d2l;
#   5. a `short` cifar search of accuracy vs GPU latency and training memory, one trial at
#      a time, its report, and the rank agreement of the measured costs with MACs;
#   6. the latency as shipped: the bf16 AOTInductor CUDA package of three networks
#      against eager and against a trial's CUDA-graph figure (benchmarks/shipped_latency.py);
#   7. the fidelity benchmark for cifar, as far as the time left allows.
# Usage: bash benchmarks/gpu_all.sh OUT [--cpu] [--from DIR]
#   OUT gets two files: gpu_all.tar.gz (every part's log and results) and summary.txt.
#   The work happens in a scratch folder, packed into OUT also when the deadline or a
#   signal cuts it short. --from DIR: the unpacked archive of an earlier call (e.g.
#   committed under benchmarks/results/); what it finished is not run again, the
#   throughput and fidelity runs resume from its JSON lines and the costs search tops up
#   to its trial count. So one call measures parts 1-3 or 1-4; a second call with --from
#   takes 4-6 on.
#   --cpu: the same parts at their CPU smoke sizes (doctor --device cpu, --tiny runs, the
#   d2l preset included), to rehearse the script where no GPU is at hand.
# It needs no environment: the project root and the data are found from this file's
# place (the data at .data/fashion-mnist, as ../shared/device/prepare.sh lays it out,
# else Debian's /usr/share/datasets/fashion-mnist); PYTHON defaults to the project's
# .venv if there is one, else python3.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:?usage: bash benchmarks/gpu_all.sh OUT [--cpu] [--from DIR]}
shift
cpu="" from=""
while [ $# -gt 0 ]; do
  case $1 in
    --cpu) cpu=--cpu ;;
    --from) from=${2:?--from needs a folder}; shift ;;
    *) echo "gpu_all.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then py=$root/.venv/bin/python
else py=python3; fi
if [ -z "${NAS_DATA_DIR:-}" ]; then
  if [ -d "$root/.data/fashion-mnist" ]; then export NAS_DATA_DIR=$root/.data/fashion-mnist
  else export NAS_DATA_DIR=/usr/share/datasets/fashion-mnist; fi
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1  # a part stopped by the deadline keeps its log
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # the machine's own pytest plugins stay out
deadline=$(( $(date +%s) + ${DEADLINE:-510} ))
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
if [ -n "$from" ]; then cp -a "$from"/. "$work"/; fi
mkdir -p "$work/done"
log="$work/gpu_all.log"
cd "$root"

pack() {  # the archive and the summary, whatever happened before
  trap - EXIT TERM INT
  {
    echo "== gpu_all.sh $(date -u +%FT%TZ), $(left) s before the deadline"
    grep -h "^torch\|^imports\|^data" "$log" 2>/dev/null
    grep -h "^== " "$log" 2>/dev/null
    grep -h "^PASS\|^FAIL\|checks passed" "$work/doctor.log" 2>/dev/null
    tail -n 1 "$work/cuda-tests.log" 2>/dev/null
    grep -h "trials/min\|vs MACs" "$work"/throughput-*.log "$work/costs-report.log" 2>/dev/null
    grep -h "^(g)" "$work/shipped-latency.log" 2>/dev/null
  } > "$out/summary.txt"
  tar czf "$out/gpu_all.tar.gz" -C "$work" .
  echo "packed $(tar tzf "$out/gpu_all.tar.gz" | wc -l) entries into $out/gpu_all.tar.gz"
  cat "$out/summary.txt"
  rm -rf "$work"
}
trap pack EXIT
trap 'exit 143' TERM INT

left() { echo $(( deadline - $(date +%s) )); }
part() {  # part NAME MIN_SECONDS COMMAND...: run if not done and MIN_SECONDS remain
  local name=$1 need=$2; shift 2
  if [ -f "$work/done/$name" ]; then
    echo "== $name: done in an earlier call" | tee -a "$log"
    return
  fi
  if [ "$(left)" -lt "$need" ]; then
    echo "== $name: skipped, $(left) s left (needs $need)" | tee -a "$log"
    return
  fi
  echo "== $name ($(left) s left)" | tee -a "$log"
  local t0 rc; t0=$(date +%s)
  timeout --signal=TERM --kill-after=20 "$(left)" "$@" > >(tee -a "$work/$name.log") 2>&1
  rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s" | tee -a "$log"
  case $rc in 124|137|143) ;; *) touch "$work/done/$name" ;; esac  # ended, not cut short
}

if [ "$cpu" = "--cpu" ]; then
  device=cpu; tiny=(--tiny); trials=4
  costs=(--preset tiny --objectives accuracy,latency-cpu --budget smoke)
else
  device=cuda; tiny=(); trials=16; costs=(--preset cifar --objectives accuracy,latency-gpu,memory --budget short)
fi
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" | tee -a "$log"
# one line each, before any GPU work: a missing package or data ends the call here
if ! $py -c "import nas.search, nas.doctor, nas.report, optuna, fvcore, plotly; print('imports: ok')" \
    2>&1 | tail -n 1 | tee -a "$log" | grep -q "^imports: ok"; then
  echo "imports: FAILED (python $py, PYTHONPATH $PYTHONPATH)" | tee -a "$log"; exit 2
fi
if ! $py -c "from nas.data.dataset import load_fashion_mnist as f; d = f(); \
print(f'data: {len(d.train_x):,} train, {len(d.val_x):,} validation images from $NAS_DATA_DIR')" \
    2>&1 | tail -n 1 | tee -a "$log" | grep -q "^data: "; then
  echo "data: FAILED (NAS_DATA_DIR $NAS_DATA_DIR)" | tee -a "$log"; exit 2
fi

part doctor 60 $py -m nas.doctor --device "$device"

# the files that hold GPU tests only: the others need packages the GPU machine lacks
part cuda-tests 90 $py -m pytest -q -p no:cacheprovider -m cuda \
  $(grep -rl --include="test_*.py" "pytest.mark.cuda" tests | sort)

part throughput-cifar 120 $py benchmarks/throughput.py --parts c --presets cifar \
  --trials "$trials" --concurrency 1,4 --device "$device" "${tiny[@]}" \
  --results "$work/throughput.jsonl" --out "$work/throughput-cifar.json"

part throughput-d2l 120 $py benchmarks/throughput.py --parts c --presets d2l \
  --trials "$trials" --concurrency 1,4 --device "$device" "${tiny[@]}" \
  --results "$work/throughput.jsonl" --out "$work/throughput-d2l.json"

url="sqlite:///$work/gpu-costs.db"
# --trials adds trials to a study: ask only for what an earlier call left to do
todo=$trials
if [ -f "$work/gpu-costs.db" ]; then
  todo=$($py -c "import optuna, sys; s = optuna.load_study(study_name='gpu-costs', \
storage=sys.argv[1]); print(max(0, $trials - sum(t.state.is_finished() for t in s.trials)))" "$url")
fi
if [ "$todo" -gt 0 ]; then
  rm -f "$work/done/costs-search" "$work/done/costs-report"
  part costs-search 90 $py -m nas.search --study gpu-costs --storage "$url" \
    --trials "$todo" --sampler random --seed 0 --concurrency 1 --device "$device" "${costs[@]}"
fi
part costs-report 20 $py - "$url" "$work" <<'EOF'
import sys
import optuna
from nas.report import main
from nas.results.table import rank_agreement, trials_frame
url, out = sys.argv[1:]
main(["--study", "gpu-costs", "--storage", url, "--out", f"{out}/gpu-costs.html",
      "--no-artifacts", "--format", "csv"])
df = trials_frame(optuna.load_study(study_name="gpu-costs", storage=url))
for col in ("GPU latency (ms)", "train memory (MB)", "CPU latency (ms)"):
    if col in df:
        n, rho, tau = rank_agreement(df, col)
        print(f"{col} vs MACs (fvcore): Spearman rho {rho:.2f}, Kendall tau {tau:.2f}, {n} networks")
EOF

# the latency as shipped on the GPU: bf16 AOTInductor package against eager and against
# a trial's CUDA-graph figure (on --cpu: the CPU ratio of one tiny network)
if [ "$cpu" = "--cpu" ]; then shipped=(--tiny --parts a); else shipped=(--parts g --rounds 3); fi
part shipped-latency 120 $py benchmarks/shipped_latency.py "${shipped[@]}" \
  --out "$work/shipped-latency-$device.json"

part fidelity-cifar 60 $py benchmarks/fidelity.py --preset cifar --device "$device" "${tiny[@]}" \
  --results "$work/fidelity-cifar.jsonl" --out "$work/fidelity-cifar.json"

echo "== done, $(left) s before the deadline" | tee -a "$log"
