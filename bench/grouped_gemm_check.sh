#!/usr/bin/env bash
# The experts' grouped GEMMs on wgmma (the default on sm_90,
# core/cuda/grouped_gemm_wgmma.cu) against the mma.sync kernel
# (SCALEMOE_GROUPED_GEMM=mma), in one device call: builds the grouped-GEMM
# parity test and bench/cuda_gemm_bench in BUILD_DIR (default build-gpu, an
# already configured CUDA tree), runs the test's two registrations (default
# and everything on mma.sync; they must pass, not skip), then the bench both
# ways, and prints the grouped rows (gfwd, gdgrad, gwgrad: the trainer's
# three products with device offsets) side by side.
# usage: bench/grouped_gemm_check.sh      (JOBS, default 16)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test grouped_gemm '^core_cuda_grouped_gemm(_mma)?_test$' \
  core_cuda_grouped_gemm_test cuda_gemm_bench
for path in mma wgmma; do
  env SCALEMOE_GROUPED_GEMM=$([ $path = mma ] && echo mma) timeout 120 \
    "$build/bench/cuda_gemm_bench" > "$build/grouped_gemm_${path}_bench.tsv" || status=1
done
# Rows: case dtype form batch m n k ms tflops.
awk -F'\t' 'FNR == 1 { file++; next } $3 ~ /^g/ {
    key = $1 " " $3; ms[key, file] = $8; tf[key, file] = $9
    if (!(key in seen)) { seen[key] = 1; order[n++] = key } }
  END {
    printf "%-26s %9s %8s %9s %8s %8s\n", "case form", "mma_ms", "TFLOP/s", "wgmma_ms", "TFLOP/s",
           "speedup"
    for (i = 0; i < n; ++i) {
      k = order[i]
      printf "%-26s %9.4f %8.1f %9.4f %8.1f %7.2fx\n", k, ms[k, 1], tf[k, 1], ms[k, 2], tf[k, 2],
             (ms[k, 2] > 0 ? ms[k, 1] / ms[k, 2] : 0)
    }
  }' "$build/grouped_gemm_mma_bench.tsv" "$build/grouped_gemm_wgmma_bench.tsv"
exit $status
