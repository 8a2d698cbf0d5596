#!/usr/bin/env bash
# Issue 14 items 5 and 6 on one GPU, after bench/gpu_bench.sh built its
# binaries (BUILD_DIR, default build-gpu: train_step_bench and scalemoe):
# - recomputation's cost: the preset's step at train.recompute NONE and FULL
#   (step time, peak memory, and the memory estimate's figure beside it);
# - the largest micro-batch: the largest one the memory estimate admits on
#   this GPU (scalemoe check-config, train.device_memory_gib = the GPU's
#   memory), NONE and FULL, each then run for a few steps to show it fits;
# - pipeline stages keep their activations: PP2 on one GPU (2 ranks sharing
#   it, collectives staged through the host) with recompute FULL (what every
#   stage did before: re-run its forward in the backward) and NONE (kept).
# Prints a Markdown table per part. Needs datasets/default for the PP2 part
# (scripts/run_default.sh prepares it; skipped without it).
# usage: bench/gpu_memory_bench.sh [PRESET]   (default gpu_moe_125m)
#   STEPS=10 WARMUP=2: timed and warm-up steps per run; RUN_TIMEOUT=120
#   DEVICE=CUDA: the PP2 part's train.device (CPU to try the script without
#   a GPU); SETS="a.b=v ...": more --set for the micro-batch parts (e.g.
#   "train.loss_chunk_tokens=8192 train.fp32_logits=false")
set -uo pipefail
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
preset=${1:-gpu_moe_125m}
build=${BUILD_DIR:-build-gpu}
steps=${STEPS:-10}
warmup=${WARMUP:-2}
run_timeout=${RUN_TIMEOUT:-120}
out="$build/gpu_memory_bench"
mkdir -p "$out"
config="configs/$preset.textproto"
extra=()
for kv in ${SETS:-}; do extra+=(--set "$kv"); done
peaks=()  # what each run's caching allocator held at its peak
gib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 |
  awk '{printf "%d", $1 / 1024}')

row_py='
import json, sys
r = json.loads(sys.stdin.read())
print("| %s | %d | %.1f | %.0f | %.1f%% | %.2f | %s |" % (r["label"], r["micro_batch"],
      r["step_ms_median"], r["tokens_per_s"], 100 * r["mfu"], r["peak_gib"], sys.argv[1]))'

# scalemoe check-config for a micro-batch and recompute on this GPU: exits 0
# when the memory estimate fits, and prints the estimate either way.
check_config() {
  "$build/scalemoe" check-config --config "$config" --set train.micro_batch_size="$1" \
    --set train.global_batch_size="$1" --set train.recompute="$2" \
    --set train.device_memory_gib="$gib" "${extra[@]}"
}

# The memory estimate's GiB for a micro-batch and recompute.
estimate() {
  check_config "$1" "$2" 2>&1 | grep -oE "estimated memory [0-9.]+ [KMGT]iB" |
    awk '{ f = ($4 == "KiB") ? 1 / 1048576 : ($4 == "MiB") ? 1 / 1024 : ($4 == "TiB") ? 1024 : 1
           printf "%.2f\n", $3 * f }' | head -1
}

bench() {  # label, recompute, micro-batch
  local label=$1 r=$2 b=$3
  timeout "$run_timeout" "$build/bench/train_step_bench" --config "$config" \
    --set train.recompute="$r" --set train.micro_batch_size="$b" --set train.global_batch_size="$b" \
    --set train.device_memory_gib="$gib" "${extra[@]}" --steps "$steps" --warmup "$warmup" \
    --label "$label" \
    > "$out/$label.log" 2>&1 || { echo "| $label | failed: $(tail -1 "$out/$label.log") |"; return; }
  grep "^BENCH_JSON " "$out/$label.log" | cut -c12- | python3 -c "$row_py" "$(estimate "$b" "$r")"
  peaks+=("$label: $(grep "^allocator peak" "$out/$label.log")")
}

fits() { check_config "$1" "$2" > /dev/null 2>&1; }  # micro-batch, recompute

largest() {  # recompute: the largest power-of-two multiple of 1 that fits
  local b=1
  while [ $b -lt 1024 ] && fits $((b * 2)) "$1"; do b=$((b * 2)); done
  fits $b "$1" && echo $b || echo 0
}

echo "== $preset on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) ($gib GiB)${SETS:+, $SETS}"
echo
echo "| run | micro-batch | step ms (median) | tokens/s | MFU | peak GiB | estimated GiB |"
echo "|---|---:|---:|---:|---:|---:|---:|"
micro=$(sed -n 's/^ *micro_batch_size: *\([0-9]*\).*/\1/p' "$config" | head -1)
for r in NONE FULL; do
  bench "recompute_${r}_mb$micro" "$r" "$micro"
done
for r in NONE FULL; do
  b=$(largest $r)
  echo "| (memory estimate: largest power-of-two micro-batch with recompute $r: $b) | | | | | | |"
  [ "$b" -gt 0 ] && bench "largest_${r}_mb$b" "$r" "$b"
done
echo
printf '%s\n' "${peaks[@]}"

if [ -f datasets/default/manifest.json ]; then
  echo
  echo "PP2 on one GPU (2 ranks sharing it, host-staged), 4 layers, 4 micro-batches of 4 per step:"
  echo
  echo "| train.recompute | tokens/s (mean of the logged steps after the first) |"
  echo "|---|---:|"
  for r in FULL NONE; do
    run="$out/pp2_$r"
    rm -rf "$run"
    timeout "$run_timeout" mpirun -np 2 --oversubscribe "$build/scalemoe" train --config "$config" \
      --quiet --run-dir "$run" --set parallel.pp=2 --set model.num_layers=4 \
      --set train.micro_batch_size=4 --set train.global_batch_size=16 --set train.recompute=$r \
      --set train.train_steps=30 --set schedule.warmup_steps=5 --set train.eval_interval=0 \
      --set train.eval_batches=1 \
      --set checkpoint.interval=0 --set logging.log_interval=5 \
      --set data.dataset_dir=datasets/default --set train.device="${DEVICE:-CUDA}" \
      > "$run.log" 2>&1 || { echo "| $r | failed: $(tail -1 "$run.log") |"; continue; }
    python3 - "$run/metrics.jsonl" "$r" <<'PY'
import json, sys
tps = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
print(f"| {sys.argv[2]} | {sum(tps[1:]) / max(1, len(tps) - 1):.0f} |")
PY
  done
fi
