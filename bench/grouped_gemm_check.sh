#!/usr/bin/env bash
# The experts' grouped GEMMs on wgmma (the default on sm_90,
# core/cuda/grouped_gemm_wgmma.cu) against the mma.sync kernel
# (SCALEMOE_GROUPED_GEMM=mma) and against wgmma storing straight from the
# registers (SCALEMOE_GROUPED_GEMM_EPILOGUE=direct), in one device call:
# builds the grouped-GEMM parity test and bench/cuda_gemm_bench in BUILD_DIR
# (default build-gpu, an already configured CUDA tree), runs the test's
# three registrations (they must pass, not skip), then the bench three
# ways, and prints the grouped rows (gfwd, gdgrad, gwgrad: the trainer's
# three products with device offsets) side by side.
# usage: bench/grouped_gemm_check.sh      (JOBS, default 16)
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-gpu}
. bench/kernel_check_util.sh
build_and_test grouped_gemm '^core_cuda_grouped_gemm(_mma|_direct)?_test$' \
  core_cuda_grouped_gemm_test cuda_gemm_bench
for path in mma wgmma direct; do
  env SCALEMOE_GROUPED_GEMM=$([ $path = mma ] && echo mma) \
    SCALEMOE_GROUPED_GEMM_EPILOGUE=$([ $path = direct ] && echo direct) timeout 120 \
    "$build/bench/cuda_gemm_bench" > "$build/grouped_gemm_${path}_bench.tsv" || status=1
done
# Rows: case dtype form batch m n k ms tflops.
awk -F'\t' 'FNR == 1 { file++; next } $3 ~ /^g/ {
    key = $1 " " $3; ms[key, file] = $8; tf[key, file] = $9
    if (!(key in seen)) { seen[key] = 1; order[n++] = key } }
  END {
    printf "%-26s %8s %7s %8s %7s %8s %7s\n", "case form", "mma_ms", "TF/s", "wgmma_ms", "TF/s",
           "direct", "TF/s"
    for (i = 0; i < n; ++i) {
      k = order[i]
      printf "%-26s %8.4f %7.1f %8.4f %7.1f %8.4f %7.1f\n", k, ms[k, 1], tf[k, 1], ms[k, 2],
             tf[k, 2], ms[k, 3], tf[k, 3]
    }
  }' "$build/grouped_gemm_mma_bench.tsv" "$build/grouped_gemm_wgmma_bench.tsv" \
  "$build/grouped_gemm_direct_bench.tsv"
exit $status
