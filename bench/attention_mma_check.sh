#!/usr/bin/env bash
# The mma.sync attention kernels (core/cuda/causal_attention_mma.cu, the
# default) against the older WMMA ones, in one device call: builds the
# tensor-core parity test and bench/cuda_attention_bench in BUILD_DIR
# (default build-gpu, an already configured CUDA tree), runs the test on both
# paths (they must pass, not skip), then the bench with SCALEMOE_ATTENTION=wmma and =mma, and
# prints per shape, dtype and form the tensor-core ms of both and the speedup.
# usage: bench/attention_mma_check.sh      (JOBS, default 16)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test attention_mma '^core_cuda_attention_tc(_mma)?_test$' core_cuda_attention_tc_test \
  cuda_attention_bench
for path in wmma mma; do
  SCALEMOE_ATTENTION=$path timeout 240 "$build/bench/cuda_attention_bench" \
    > "$build/attention_${path}_bench.tsv" || status=1
done
# Rows: case dtype path form b t h kv d ms tflops; the "tc" path is the one switched.
awk -F'\t' 'FNR == 1 { file++; next } $3 == "tc" {
    key = $1 "\t" $2 "\t" $4; ms[key, file] = $10
    if (!(key in seen)) { seen[key] = 1; order[n++] = key } }
  END {
    printf "%-16s %-5s %-4s %9s %9s %8s\n", "case", "dtype", "form", "wmma_ms", "mma_ms", "speedup"
    for (i = 0; i < n; ++i) {
      k = order[i]; split(k, f, "\t")
      printf "%-16s %-5s %-4s %9.3f %9.3f %7.2fx\n", f[1], f[2], f[3], ms[k, 1], ms[k, 2],
             (ms[k, 2] > 0 ? ms[k, 1] / ms[k, 2] : 0)
    }
  }' "$build/attention_wmma_bench.tsv" "$build/attention_mma_bench.tsv"
exit $status
