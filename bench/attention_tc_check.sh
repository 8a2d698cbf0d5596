#!/usr/bin/env bash
# Issue 14, attention on tensor cores, in one device call: builds the
# attention tests (exact kernels and the tensor-core path of
# AttentionOptions::bf16_operands) and bench/cuda_attention_bench, runs the
# tests (they must pass, not skip: SCALEMOE_REQUIRE_GPU=1), then the bench,
# and prints a short table: per shape and dtype, fwd and bwd ms and TFLOP/s
# of the exact kernels and the tensor cores, and the speedup.
# usage: bench/attention_tc_check.sh [ABSL_PREFIX]     (as bench/cuda_ops_check.sh)
#   BUILD_DIR (default build-gpu), JOBS (default 16) from the environment.
#   MODEL=1 also builds model_cuda_model_test and runs its bf16 tests (the
#   GPU presets' attention, head dim 64, then takes the tensor cores; every
#   gradient within cosine 0.999 of the fp32 CPU step).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
jobs=${JOBS:-16}
extra=()
if [ -n "${1:-}" ]; then
  export ABSL_PREFIX=$(realpath "$1")
  extra+=(-Dabsl_DIR="$ABSL_PREFIX/lib/x86_64-linux-gnu/cmake/absl")
  export LD_LIBRARY_PATH="$ABSL_PREFIX/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || true
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null || exit 1
grep -q "SCALEMOE_CUDA:BOOL=ON" "$build/CMakeCache.txt" ||
  { echo "CUDA backend is OFF in $build (nvcc not found?)" >&2; exit 1; }
tests=(core_cuda_attention_test core_cuda_attention_tc_test)
model_target=()
[ "${MODEL:-0}" = 1 ] && model_target=(model_cuda_model_test)
start=$(date +%s)
if ! cmake --build "$build" -j"$jobs" --target "${tests[@]}" "${model_target[@]}" cuda_attention_bench \
    > "$build/attention_tc_build.log" 2>&1; then
  grep -E -A6 "error|Error" "$build/attention_tc_build.log" | head -80
  echo "build failed: $build/attention_tc_build.log" >&2
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
status=0
regex="^($(IFS='|'; echo "${tests[*]}"))\$"
SCALEMOE_REQUIRE_GPU=1 timeout 300 ctest --test-dir "$build" -R "$regex" --output-on-failure \
  > "$build/attention_tc_ctest.log" 2>&1 || status=1
grep -E "tests passed|Passed|\(Failed\)|\(Skipped\)|\(Timeout\)|Not Run" \
  "$build/attention_tc_ctest.log" || true
[ $status -eq 0 ] ||
  grep -E -B2 -A12 "Failure|FAILED|SM_CHECK|Aborted|error" "$build/attention_tc_ctest.log" | head -120
if [ "${MODEL:-0}" = 1 ]; then
  SCALEMOE_REQUIRE_GPU=1 timeout 300 "$build/tests/model/model_cuda_model_test" \
    --gtest_filter='*Bf16*' > "$build/attention_tc_model.log" 2>&1 || status=1
  grep -E "^\[  (PASSED|FAILED) |^\[  FAILED|Failure" "$build/attention_tc_model.log" | head -20
fi
timeout 240 "$build/bench/cuda_attention_bench" > "$build/attention_tc_bench.tsv" || status=1
# case dtype path form b t h kv d ms tflops -> one row per (case, dtype, form).
awk -F'\t' 'NR == 1 { next }
  { key = $1 "\t" $2 "\t" $4; ms[key, $3] = $10; tf[key, $3] = $11;
    if (!(key in seen)) { seen[key] = 1; order[n++] = key } }
  END {
    printf "%-16s %-5s %-4s %10s %8s %10s %8s %8s\n", "case", "dtype", "form",
           "exact_ms", "TFLOP/s", "tc_ms", "TFLOP/s", "speedup"
    for (i = 0; i < n; ++i) {
      k = order[i]; split(k, f, "\t")
      sp = (ms[k, "tc"] > 0) ? ms[k, "exact"] / ms[k, "tc"] : 0
      printf "%-16s %-5s %-4s %10.3f %8.1f %10.3f %8.1f %7.1fx\n", f[1], f[2], f[3],
             ms[k, "exact"], tf[k, "exact"], ms[k, "tc"], tf[k, "tc"], sp
    }
  }' "$build/attention_tc_bench.tsv"
exit $status
